"""The paraphrase banks of the template backend: question and reasoning wordings per stage, kind and modality.

Data only; `data_gen.synth.templates` chooses among them. Each bank is `{"all": [...], "<modality>": [...]}`:
a modality (`xray`, `ct`, `mri`, `generic`) sees the shared wordings plus its own.

Placeholders (filled by the template backend):
  {img}     what the image is, without article: "chest radiograph", "CT slice", "MR image", "image"
  {img_a}   the same with article: "a chest radiograph"
  {cls}     a lesion class as it reads in a sentence ("nodule"); {a_cls} with article ("a nodule")
  {abs_a}   an absent class with article (closed "no" questions)
  {region}  a place without article ("right upper zone of the right lung"); used as "the {region}"
  {organ}   the host organ without article ("right lung")
  {be}      "is" or "are", agreeing with {organ} ("ribs are")
  {organs}  examined structures joined ("right lung, left lung and heart"), for negatives
  {box}     the canonical box text from `medclm_jax.records.boxes.format_box`
  {size}    ", measuring about 12 x 10 mm" or ""
  {answer}  the view's answer

Question kinds (the stage decides which are allowed; see templates.py):
  class        open, asks what the finding is          answer: class name(s)
  location     open, asks where a named/boxed lesion is answer: region phrase(s)
  organ        open, asks which organ holds it         answer: organ name(s)
  closed       yes/no "is there {a_cls}"               answer: yes (present) / no (absent class)
  any          yes/no "is there any abnormality"       answer: yes / no (negative image)
"""

from __future__ import annotations

# Image nouns per modality; a chest hint turns the radiograph into a chest radiograph.
IMAGE_NOUNS = {
    "xray_chest": ["chest radiograph", "chest X-ray", "chest film", "chest radiograph"],
    "xray": ["radiograph", "X-ray image", "plain film"],
    "ct": ["CT image", "CT slice", "axial CT image", "CT scan"],
    "mri": ["MR image", "MRI slice", "MRI scan"],
    "generic": ["image", "medical image", "scan"],
}

QUESTIONS = {
    # ---- Easy: the box is drawn on the image; questions refer to it -----------------------------------------
    ("easy", "class"): {
        "all": [
            "What abnormality is seen in the highlighted region?",
            "What is the finding inside the box?",
            "What lesion is marked by the bounding box?",
            "Which abnormality does the boxed area of this {img} show?",
            "Name the abnormality in the highlighted area.",
            "What does the marked region of this {img} show?",
            "Identify the lesion enclosed by the box.",
            "What type of lesion is highlighted in this {img}?",
            "What is the abnormal finding in the outlined region?",
            "What pathology is visible in the highlighted box?",
        ],
        "xray": ["What radiographic finding is shown in the highlighted region?",
                 "What opacity or abnormality lies inside the box on this {img}?"],
        "ct": ["What lesion is highlighted on this {img}?", "What does the boxed area of the CT show?"],
        "mri": ["What lesion does the highlighted region of this {img} show?"],
    },
    ("easy", "location"): {
        "all": [
            "Where is the highlighted lesion located?",
            "In which part of the body does the boxed finding lie?",
            "Where is the abnormality inside the box?",
            "What is the anatomical location of the highlighted region?",
            "Which anatomical region does the box cover?",
            "Where in the {img} is the marked lesion?",
        ],
    },
    ("easy", "closed"): {
        "all": [
            "Does the highlighted region show {a_cls}?",
            "Is the boxed lesion {a_cls}?",
            "Is there {a_cls} inside the box?",
            "Is the abnormality in the highlighted area {a_cls}?",
            "Does the marked region contain {a_cls}?",
            "Is {a_cls} seen in the outlined region?",
            "Could the highlighted finding be {a_cls}?",
            "Is the lesion in the box consistent with {a_cls}?",
        ],
    },
    ("easy", "any"): {  # negative images: nothing is highlighted
        "all": [
            "Is there any abnormality in this {img}?",
            "Does this {img} show any lesion?",
            "Is any focal lesion visible in this {img}?",
            "Are there abnormal findings in this {img}?",
            "Is there a lesion that should be highlighted in this {img}?",
            "Does anything abnormal appear in this {img}?",
        ],
    },
    # ---- Medium: the same image without the box; nothing refers to a box ------------------------------------
    ("medium", "class"): {  # {region} is named; or, without {region}, the answer lists every lesion
        "all": [
            "What abnormality is seen in the {region}?",
            "What is the finding in the {region} on this {img}?",
            "Which lesion is present in the {region}?",
            "What does this {img} show in the {region}?",
            "Name the abnormality visible in the {region}.",
            "What pathology can be identified in the {region}?",
            "What lesion affects the {region} in this {img}?",
            "Looking at the {region}, what abnormality is present?",
        ],
        "xray": ["What radiographic abnormality is seen in the {region}?"],
        "ct": ["What lesion is seen in the {region} on this CT?"],
    },
    ("medium", "class_image"): {
        "all": [
            "What abnormality is seen in this {img}?",
            "What is the main finding in this {img}?",
            "Which abnormalities are present in this {img}?",
            "What does this {img} show?",
            "What lesion can be identified in this {img}?",
            "Name the abnormal findings in this {img}.",
            "What pathology is visible on this {img}?",
            "What is abnormal in this {img}?",
        ],
    },
    ("medium", "location"): {
        "all": [
            "Where is the {cls} located?",
            "Where in this {img} is the {cls}?",
            "Where can the {cls} be seen?",
            "What is the location of the {cls}?",
            "In which part of the {img} does the {cls} lie?",
            "Where does this {img} show the {cls}?",
        ],
    },
    ("medium", "organ"): {
        "all": [
            "In which organ is the {cls} found?",
            "Which organ is affected by the {cls}?",
            "Which structure contains the {cls}?",
            "Which organ does the {cls} involve?",
            "The {cls} lies in which organ?",
        ],
    },
    ("medium", "closed"): {
        "all": [
            "Is there {a_cls} in the {region}?",
            "Does the {region} show {a_cls}?",
            "Is {a_cls} present in the {region}?",
            "Can {a_cls} be seen in the {region} on this {img}?",
            "Does this {img} show {a_cls} in the {region}?",
            "Is the {region} affected by {a_cls}?",
        ],
    },
    ("medium", "any"): {  # negative images: {region} is one of the examined structures
        "all": [
            "Is there any abnormality in the {region}?",
            "Does the {region} show any lesion?",
            "Is a focal lesion visible in the {region}?",
            "Are there abnormal findings in the {region} on this {img}?",
            "Does the {region} look abnormal on this {img}?",
        ],
    },
    # ---- Hard: another image of the domain; general questions without location or box ----------------------
    ("hard", "class"): {  # the answer lists every lesion of the image
        "all": [
            "What abnormality does this {img} show?",
            "What is the finding in this {img}?",
            "Which lesion is present?",
            "What pathology is visible?",
            "What is abnormal in this {img}?",
            "Name the abnormality in this {img}.",
            "What lesion does this {img} demonstrate?",
            "What does this {img} reveal?",
        ],
    },
    ("hard", "organ"): {
        "all": [
            "Which organ is affected by the {cls}?",
            "Which organ contains the {cls}?",
            "In which organ is the {cls}?",
            "What organ does the {cls} involve?",
        ],
    },
    ("hard", "closed"): {
        "all": [
            "Is there {a_cls} in this {img}?",
            "Does this {img} show {a_cls}?",
            "Is {a_cls} present?",
            "Can {a_cls} be seen in this image?",
            "Does the patient have {a_cls} on this {img}?",
            "Is {a_cls} visible?",
            "Is there evidence of {a_cls}?",
        ],
    },
    ("hard", "any"): {
        "all": [
            "Is there any abnormality in this {img}?",
            "Is this {img} abnormal?",
            "Does this {img} show any lesion?",
            "Are there abnormal findings?",
            "Is any lesion visible in this {img}?",
        ],
    },
}

# ---- reasoning steps: modality -> anatomy -> location (box) -> finding -> answer ------------------------------
COT_MODALITY = {
    "all": ["This is {img_a}.", "The image is {img_a}.", "We are looking at {img_a}.", "The study shown is {img_a}."],
    "xray": ["This is {img_a}; dense structures appear bright and air appears dark."],
    "ct": ["This is {img_a}, displayed in a soft-tissue or lung window."],
    "mri": ["This is {img_a}; signal intensity reflects tissue composition."],
}
COT_ANATOMY = {
    "all": ["The {organ} {be} visible.", "The relevant anatomy is the {organ}.", "The image shows the {organ}.",
            "The {organ} can be identified.", "The {organ} {be} in view."],
}
COT_ANATOMY_UNKNOWN = {
    "all": ["The lesion does not lie within any segmented organ.",
            "The host organ of the lesion cannot be identified with confidence.",
            "No segmented organ contains the lesion."],
}
COT_ANATOMY_NEAR = ["The lesion lies just outside the {near}.", "The lesion is next to, not inside, the {near}.",
                    "The nearest segmented organ is the {near}, which does not contain the lesion."]
COT_LOCATION = {
    "easy": ["The highlighted box at {box} lies in the {region}.", "The box {box} marks an area in the {region}.",
             "The highlighted region, {box}, is in the {region}.", "Inside the box {box}, in the {region}, "
             "there is an abnormal area."],
    "medium": ["There is an abnormal area in the {region} at {box}.",
               "A lesion is located in the {region}, at {box}.",
               "Examining the {region}, an abnormal area is found at {box}.",
               "The abnormal region lies at {box}, in the {region}."],
}
COT_LOCATION_UNKNOWN = {
    "easy": ["The highlighted box is at {box}.", "The box marks an area at {box}.",
             "The highlighted region is {box}."],
    "medium": ["An abnormal area is found at {box}.", "A lesion is located at {box}.",
               "The abnormal region lies at {box}."],
}
COT_FINDING = ["Its appearance is consistent with {a_cls}{size}.", "This finding represents {a_cls}{size}.",
               "The abnormality is {a_cls}{size}.", "It has the appearance of {a_cls}{size}."]
COT_OTHER = ["There is also {a_cls} in the {region}.", "In addition, {a_cls} is seen in the {region}."]
COT_OTHER_UNKNOWN = ["There is also {a_cls} elsewhere in the image.", "In addition, {a_cls} is seen elsewhere."]
COT_CONCLUSION = {
    "class": ["Therefore, the answer is {answer}.", "So the abnormality is {answer}.",
              "Hence the finding is {answer}."],
    "class_image": ["Therefore, the answer is {answer}.", "So the image shows {answer}.",
                    "Hence the findings are {answer}."],
    "location": ["So the lesion is in the {answer}.", "Therefore, it is located in the {answer}.",
                 "Hence the location is the {answer}."],
    "organ": ["So the organ involved is the {answer}.", "Therefore, it lies in the {answer}.",
              "Hence the affected organ is the {answer}."],
    "yes": ["So, yes, there is {a_cls}.", "Therefore, {a_cls} is present.", "Hence the answer is yes."],
    "no": ["There is no sign of {abs_a}, so the answer is no.", "The finding is {a_cls}, not {abs_a}; so the "
           "answer is no.", "Therefore, {abs_a} is not present."],
}
COT_NEGATIVE_ANATOMY = ["In view: the {organs}.", "The {organs} can be assessed.", "The image shows the {organs}."]
COT_NEGATIVE_ANATOMY_NONE = ["The visible anatomy can be assessed.", "The structures in view can be assessed."]
COT_NEGATIVE_FINDING = ["No focal lesion is seen, so there is no region to localize.",
                        "No focal lesion or abnormal opacity is seen anywhere.",
                        "There is no focal lesion; no area needs to be marked."]
COT_NEGATIVE_CONCLUSION = {
    "any": ["So the answer is no.", "Therefore, no abnormality is present.", "Hence the answer is no."],
    "closed": ["There is no sign of {abs_a}, so the answer is no.", "Therefore, {abs_a} is not present.",
               "Hence the answer is no."],
}
