"""What draem-jax knows of MVTec AD without tensorflow-datasets: its categories and sizes.

`draem_jax.data.mvtec` (the TFDS builder) imports tensorflow-datasets; code that only needs
these facts (config checks, the folder source, the trainer's category loop) imports this
module, so that folder data sets run where tensorflow-datasets is not installed.
"""

# The 15 categories (must equal configs/mvtec.py MVTEC_CATEGORIES; a test checks it).
CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)

# (train, test) image counts of the official release: 3,629 training and 1,725 test images.
EXPECTED_COUNTS = {
    "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117),
    "grid": (264, 78), "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115),
    "pill": (267, 167), "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42),
    "transistor": (213, 100), "wood": (247, 79), "zipper": (240, 151),
}
