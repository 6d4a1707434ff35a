"""Built-in sample data: synthetic chest radiographs and CT slices in real formats (`medclm-data phantom`).

`write_phantom(out_dir, n, seed)` writes the layout documented in `data_gen.phantom.writer`; the command line
is `data_gen/commands/phantom.py`. The anatomy is drawn by `cxr` and `ct`, the files by `files`.
"""

from data_gen.phantom.writer import CLASS_COLUMN, write_phantom

__all__ = ["CLASS_COLUMN", "write_phantom"]
