"""Write notebooks/04_submit.ipynb (no outputs) from the cells below: `python bench/make_notebook_04.py`."""

import os

from notebook_writer import BOOTSTRAP, write_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "notebooks", "04_submit.ipynb")

CELLS = [
    ("md", """\
# 04 · Submission: predict the test images with TTA and write `submission.csv`

Cassava Leaf Disease Classification was a *code competition*: Kaggle re-runs this notebook with the
**internet off** on a hidden test set of about 15,000 photos that replaces `test_images/`, and scores the
`submission.csv` it writes (`image_id,label`, one row per image). So everything the notebook needs must
be attached as inputs:

- the competition data (`/kaggle/input/cassava-leaf-disease-classification`),
- `kitlib` (this repository uploaded as a dataset, `/kaggle/input/kitlib`),
- the fine-tuned classifier from notebook 02 / `python -m kitlib finetune --out DIR` (a dataset holding
  `classifier.keras` and `classifier.json`: the Keras 3 model, and the class names and the image size it
  expects).

The model runs on Keras 3 with the JAX backend (on a TPU v5e-8 every batch is split over the 8 cores);
TensorFlow only decodes and resizes the images.

Steps: find the data and the model → look at the views test-time augmentation (TTA) averages over →
predict → write and validate the file → look at some predictions."""),
    ("code", BOOTSTRAP),
    ("md", """\
## Setup

One cell of settings. `SMOKE=1` (CI, or any machine without a fine-tuned model) replaces the model by an
**untrained stand-in** (a small Keras 3 classifier saved the way `finetune` saves a real one) so the whole
path runs on a CPU in seconds; its predictions are meaningless. `runtime.setup()` finds the devices and
spreads each batch over them."""),
    ("code", """\
from kitlib import export, runtime, submission, viz

RT = runtime.setup()  # devices and DataParallel over them; refuses a TPU/GPU that JAX cannot see

SMOKE = os.environ.get("SMOKE") == "1"  # CI smoke run: the bundled sample and an untrained stand-in model
ON_KAGGLE = runtime.on_kaggle()
DATA_DIR = runtime.find_data_dir()  # the competition on Kaggle, else data/sample (synthetic, same layout)
MODEL_DIR = None  # a folder with classifier.json; None: the single one attached under /kaggle/input
WORK_DIR = "/kaggle/working" if ON_KAGGLE else os.path.join(runtime.repo_root(), "runs", "04_submit")
OUT_CSV = os.path.join(WORK_DIR, "submission.csv")  # Kaggle scores /kaggle/working/submission.csv
# no fine-tuned model in CI or away from Kaggle: an untrained stand-in goes here; None: a missing model is an error
STAND_IN_DIR = os.path.join(WORK_DIR, "stand_in_model") if (SMOKE or not ON_KAGGLE) else None
SOURCE = "images"  # test_images/: the folder Kaggle fills with the hidden test set ("tfrecords" reads test_tfrecords/)
TTA = "flip"  # identity + left-right + up-down mirror; "flip+crops" adds the centre and 4 corner crops (8 passes)
BATCH_SIZE = 8 if SMOKE else 32  # images per forward pass (each view is one more pass), split over the devices
SHOW = 12  # test images drawn with their predictions
SAMPLE_SUBMISSION = os.path.join(DATA_DIR, "sample_submission.csv")  # ids and row order the file must follow

print(dict(SMOKE=SMOKE, ON_KAGGLE=ON_KAGGLE, DEVICES=f"{RT.num_devices} x {RT.kind}", DATA_DIR=DATA_DIR,
           MODEL_DIR=MODEL_DIR, OUT_CSV=OUT_CSV, SOURCE=SOURCE, TTA=TTA, BATCH_SIZE=BATCH_SIZE))"""),
    ("md", """\
## The test images

`find_data_dir()` returns `/kaggle/input/cassava-leaf-disease-classification` when the competition is
attached, else the bundled sample. While you edit the notebook, Kaggle shows only one test image; the
scoring run fills `test_images/` with the hidden set, so nothing here may assume a count. The TFRecords in
`test_tfrecords/` hold the same images; `submission.predict` reads either, in a fixed order, decoding
each image once."""),
    ("code", """\
source = submission.open_source(DATA_DIR, kind=SOURCE)
print(f"{source.count} test images in {source.where}")
image_ids, images = submission.load_images(DATA_DIR, limit=SHOW, kind=SOURCE)
print("first ids:", image_ids[:3], "size (H, W, 3):", images[0].shape)"""),
    ("md", """\
## The model

`find_classifier` takes `MODEL_DIR`, or finds the one folder holding `classifier.json` among the attached
inputs. It is read from disk only (`classifier.keras`, loaded by Keras 3: no TF Hub, no network).
`check_class_names` refuses a model whose class order differs from the competition's label map: every
label it writes would name another disease."""),
    ("code", """\
model_dir = submission.find_classifier(MODEL_DIR, stand_in_dir=STAND_IN_DIR)
classifier = export.load_classifier(model_dir)
submission.check_class_names(classifier.class_names, DATA_DIR)
print(f"{model_dir}: {len(classifier.class_names)} classes at {classifier.image_size} px")"""),
    ("md", """\
## What the model sees: the TTA views

The *identity* view is the whole photo resized to the model's `image_size` S, exactly the preprocessing
of the validation set in fine-tuning (official BiT evaluates that way), so TTA `"none"` reproduces the
validation accuracy. Mirrors are free extra views: a leaf has no up or down. The crop views cut S × S
from the photo resized to S · 512/480, the scale BiT's random crops were trained at. The 800×600 photo is
squashed to a square in every view, as it was in training. Each view is checked here before it is used."""),
    ("code", """\
views = submission.tta_views(images[0], classifier.image_size, "flip+crops")
viz.plot_tta_views(views, submission.VIEWS);"""),
    ("md", """\
## Predict with TTA and write the file

For every image the model's **probabilities** over the views are averaged (the winning Cassava teams
averaged over flips and crops), then the label is their argmax. Averaging probabilities, not logits,
keeps one over-confident view from outvoting the others. The file is validated *before* it is written
(a label outside the classes, a duplicate id, an id missing from or unknown to `sample_submission.csv`
raise an error, and nothing is written) and rows follow `sample_submission.csv`."""),
    ("code", """\
result = submission.predict_and_write(classifier, DATA_DIR, OUT_CSV, tta=TTA, kind=SOURCE, batch_size=BATCH_SIZE)"""),
    ("md", """\
## Check the written file

Read it back as the grader would: header `image_id,label`, one integer label per test id, the ids of
`sample_submission.csv` in its order."""),
    ("code", """\
rows, labels = submission.validate_submission(OUT_CSV, SAMPLE_SUBMISSION, num_classes=len(classifier.class_names))
print(f"{OUT_CSV}: {len(rows)} rows, valid")
print(open(OUT_CSV).read()[:120])"""),
    ("md", """\
## Look at some predictions

Each test image with the predicted disease and its averaged probability. With the real model, look for
the classes the model confuses (CBSD streaks and CMD mosaic, the healthy leaves); with the stand-in the
names are arbitrary."""),
    ("code", """\
viz.plot_predictions(images, image_ids, result.probs_for(image_ids), classifier.class_names, max_images=SHOW);"""),
    ("md", """\
## What could go wrong

- **No model found / "internet off"**: attach the dataset with the fine-tuned classifier; nothing is
  downloaded here. TF Hub handles only matter for fine-tuning, not for this notebook.
- **Class order**: a model fine-tuned on a class-folder dataset has other class names; it is refused
  rather than allowed to write wrong labels.
- **Time limit**: the scoring run predicts ~15,000 photos; every TTA view is one more forward pass
  (`"flip"` = 3, `"flip+crops"` = 8). Time one batch on the notebook's GPU before choosing.
- **Wrong place**: Kaggle reads only `/kaggle/working/submission.csv`."""),
]


if __name__ == "__main__":
    write_notebook(CELLS, OUT)
