"""Write notebooks/03_visualize_crops.ipynb (no outputs): ``.venv/bin/python bench/make_notebook_03.py``."""

import os

from notebook_writer import BOOTSTRAP, write_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "notebooks", "03_visualize_crops.ipynb")

CELLS = [
    ("md", """# 03 · Multi-crop views: every crop from one image

SwAV learns by **swapped prediction**: the code (cluster assignment) of one view of an image must be
predicted from *another view of the same image*. The views are the multi-crops: 2 large crops
(224 px, 14-100 % of the image area) and 6 small ones (96 px, 5-14 %), each with flip, colour
jitter, grayscale and blur.

This notebook looks at the crops `kitlib.augment` produces and checks, by eye, the properties its
tests check by number:

1. all crops of one training example come from **one** source image;
2. each augmentation does what it should;
3. crop windows have the areas and aspect ratios SwAV asks for, taken from the original image
   (never a squashed square)."""),
    ("md", "## Setup"),
    ("code", BOOTSTRAP),
    ("code", "from kitlib import augment, data, runtime, viz"),
    ("code", """SMOKE = os.environ.get("SMOKE") == "1"       # CI: fewer images and draws
DATA_DIR = runtime.find_data_dir()              # the competition on Kaggle, else data/sample
CROPS = "2x224@0.14-1,6x96@0.05-0.14"           # SwAV's best ImageNet setting (augment.SWAV_PAPER)
N_IMAGES = 3 if SMOKE else 6                    # source images shown
DRAWS = 500 if SMOKE else 5000                  # crop windows drawn for the histograms
SEED = 0                                        # same seed, same crops

CONFIG = augment.parse_multicrop_spec(CROPS)
print(f"data: {DATA_DIR}\\ncrops: {CONFIG}")"""),
    ("md", """## Data

Records are read **encoded** (`decode=False`): `multicrop` decodes each JPEG once, only the window
its crops need and at a reduced scale when no crop needs full resolution; shuffling encoded records
keeps the shuffle buffer small."""),
    ("code", """files = data.list_tfrecords(DATA_DIR)
records = data.load_dataset(files, decode=False, ordered=True)
print(f"{len(files)} shards, {data.count_data_items(files)} images")"""),
    ("md", """## Each row: one source image and all of its crops

Crops without augmentation first, so the windows are easy to find in the source. Every crop in a
row shows the same leaf: large crops cover most of it, small crops zoom in on a detail."""),
    ("code", """sources, crops = augment.multicrop_preview(records, CONFIG, n=N_IMAGES, augment=False, seed=SEED)
viz.show_crops(sources, crops, title="crops only (augment=False)");"""),
    ("md", """The same images with the full SwAV augmentation (`augment=True`): each crop draws its own
flip, jitter, grayscale and blur, but it is still a view of the image at the start of its row."""),
    ("code", """sources, crops = augment.multicrop_preview(records, CONFIG, n=N_IMAGES, augment=True, seed=SEED)
viz.show_crops(sources, crops, title="full SwAV augmentation (augment=True)");"""),
    ("md", """### Why this matters: the seed's loss sat at ln K

The seed notebook built one `dataset.shuffle(1024).map(crop)` per crop and zipped the five
loaders. Each shuffle is independent, so the five "views" of a training example were crops of five
*different* images. Swapped prediction then asks the network to predict the code of one image from
an unrelated one: nothing can be learned, the best it can do is predict the uniform distribution,
and the loss settles at the collapse floor ln K (the seed: 2.713 with K = 15 prototypes, ln 15 =
2.708). Its crop grid showed one crop per column from different batches, which hid the problem; a
row per source image, as above, makes it visible at a glance."""),
    ("md", """## One panel per augmentation

Each row applies one augmentation alone (always on) to copies of the first large crop; the last row
is the full chain with SwAV's probabilities (jitter 0.8, grayscale 0.2, blur 0.5, flip 0.5).
Colour jitter uses strength 1.0 as in SwAV (the seed used 0.5); the blur kernel is about 10 % of
the crop side (23 px on a 224 px crop, 9 px on a 96 px crop; the seed used 23 px everywhere)."""),
    ("code", """gallery = augment.augmentation_gallery(crops[0][0], draws=4, seed=SEED)
viz.show_augmentations(gallery);"""),
    ("md", """## Crop areas and aspect ratios actually drawn

`sample_crop_boxes` draws the *area* fraction uniformly in each group's range, then an aspect ratio
(w/h, log-uniform over the part of [3/4, 4/3] at which that area fits in the image, which is why
the largest crops of a 4:3 photo lean towards 4/3); the window is cut from the original image and
only then resized. The seed instead squashed every image to a square and drew
the crop *side* from the range, so its small crops covered 0.25-2 % of the image instead of 5-14 %,
and every crop was distorted by the squash."""),
    ("code", """stats = augment.window_stats(CONFIG, sources[0].shape[:2], draws=DRAWS, seed=SEED)
viz.plot_crop_distributions(stats);"""),
    ("md", """## Training input

For SwAV training, `multicrop_batches` shuffles encoded records, crops, batches with
`drop_remainder=True` (static shapes for TPU) and prefetches. With `augment="device"` the host only
decodes, crops and flips; the colour work then runs on the accelerator in the train step with
`augment.ColorAugment()`, a Keras 3 layer (JAX, jitted with the step; the same jitter, grayscale
and blur as the host, each image with its own draws; see `bench/pipeline.py` for when each mode is
faster). Here it runs once on a batch, fed numpy from `tf.data`."""),
    ("code", """batches = augment.multicrop_batches(records, CONFIG, batch_size=4, augment="device", seed=SEED)
crops = [c.numpy() for c in next(iter(batches))]     # tf.data feeds the host; Keras/JAX takes numpy
colored = augment.ColorAugment(seed=SEED)(crops, training=True)
print([tuple(c.shape) for c in colored])"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, OUT)
