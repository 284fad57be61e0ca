"""MNIST for the models: raw files (:mod:`.files`), checked settings (:mod:`.settings`), batches sliced on the device
(:mod:`.loader`), transforms and the report's shifts (:mod:`.transforms`), the LightningDataModule
(:mod:`.datamodule`) and photos of digits (:mod:`.images`, imported on use: it needs Pillow).

``mnist_lightning.data.MNISTDataModule`` is the class path configs and checkpoints name; the names below are the
package's public ones.
"""

from mnist_lightning.data.datamodule import MNISTDataModule, split_indices
from mnist_lightning.data.files import (
    DATA_DIR_ENV,
    NUM_TEST,
    NUM_TRAIN,
    RAW_FILES,
    MNISTDataError,
    default_data_dir,
    describe_raw_file_problem,
    download,
    ensure_mnist,
    load_checked_splits,
    load_raw_files,
    load_split,
    missing_raw_files,
    parse_idx,
    raw_dir,
    raw_source,
    read_idx,
    read_raw_bytes,
    verify_raw_files,
)
from mnist_lightning.data.loader import ShardedBatchOrder, TensorBatchLoader
from mnist_lightning.data.settings import EVAL_BATCH_SIZE, MAX_SEED, resolve_val_size
from mnist_lightning.data.transforms import (
    MEAN,
    STD,
    elastic_displacement,
    gaussian_blur,
    normalize,
    normalize_uint8,
    random_affine,
)

__all__ = [
    "DATA_DIR_ENV",
    "EVAL_BATCH_SIZE",
    "MAX_SEED",
    "MEAN",
    "NUM_TEST",
    "NUM_TRAIN",
    "RAW_FILES",
    "STD",
    "MNISTDataError",
    "MNISTDataModule",
    "ShardedBatchOrder",
    "TensorBatchLoader",
    "default_data_dir",
    "describe_raw_file_problem",
    "download",
    "elastic_displacement",
    "ensure_mnist",
    "gaussian_blur",
    "load_checked_splits",
    "load_raw_files",
    "load_split",
    "missing_raw_files",
    "normalize",
    "normalize_uint8",
    "parse_idx",
    "random_affine",
    "raw_dir",
    "raw_source",
    "read_idx",
    "read_raw_bytes",
    "resolve_val_size",
    "split_indices",
    "verify_raw_files",
]
