"""Guest images: the catalogue on shared storage, per-VM disks, and the tiny test image.

See :mod:`usher.images.catalog` for the storage layout and :mod:`usher.images.tiny` for
``usher image build tiny``.
"""

from usher.images.catalog import (
    ImageError,
    create_overlay,
    delete_image,
    image_dir,
    image_path,
    import_disk,
    list_images,
    read_manifest,
    remove_vm_disks,
    vm_dir,
    write_manifest,
)
from usher.images.tiny import build_tiny

__all__ = [
    "ImageError",
    "build_tiny",
    "create_overlay",
    "delete_image",
    "image_dir",
    "image_path",
    "import_disk",
    "list_images",
    "read_manifest",
    "remove_vm_disks",
    "vm_dir",
    "write_manifest",
]
