# shellcheck shell=bash
# Sourced by the launchers: how they print a command (`+ gcloud ...`, `--dry-run`) and build one for a remote shell.

# quote ARG...: the arguments joined by spaces, each as the shell reads it back: bare when it holds only
# characters no shell treats specially, else in single quotes (a quote inside as '\'').
quote() {
  local arg out=() q="'\\''"
  for arg in "$@"; do
    if [[ -n $arg && $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("$arg")
    else
      out+=("'${arg//\'/$q}'")
    fi
  done
  echo "${out[*]}"
}
