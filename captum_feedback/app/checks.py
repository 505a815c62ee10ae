"""What the ``captum-feedback`` commands check before anything heavy loads (torch, a model,
a photo's pixels), so that a bad argument is refused in one line within a second or two, and
the class names users can ask for.

Nothing here imports torch: photos are checked from their headers, the device from the
machine's drivers, ImageNet's class names are read from torchvision's installed source without
importing it, and WordNet (Debian's ``wordnet-base``), where installed, adds each ImageNet
class's synonyms, definition and the words of its ancestors, so that ``horse`` finds ``sorrel``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

DEFAULT_MAX_MEGAPIXELS = 50.0
"""Photos above this many megapixels are refused (``--max-megapixels``), unless downscaled."""
MIN_SIDE = 8
"""Photos with a side below this many pixels are refused: there is nothing to localize."""
WORDNET = Path("/usr/share/wordnet")


class CommandError(Exception):
    """A problem to report as one line on stderr (exit status 2)."""


def photo_size(path: Path, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, downscale: bool = False
               ) -> Tuple[int, int]:
    """A photo's ``(width, height)`` from its header, checked.

    Raises:
        CommandError: no file, not an image, smaller than :data:`MIN_SIDE`, or over
            ``max_megapixels`` when it is not to be downscaled.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CommandError(f"No image at {path}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        width, height = _bomb_size(path)
    except (UnidentifiedImageError, OSError) as error:
        raise CommandError(f"{path} is not a readable image: {error}") from None
    if min(width, height) < MIN_SIDE:
        raise CommandError(f"{path} is {width} x {height} pixels: too small to explain (at least {MIN_SIDE} a side).")
    megapixels = width * height / 1e6
    if megapixels > max_megapixels and not downscale:
        raise CommandError(f"{path} is {width} x {height} pixels ({megapixels:.0f} megapixels), over the limit of "
                           f"{max_megapixels:g}: pass --downscale to explain it at that size, or raise "
                           "--max-megapixels.")
    return width, height


def _bomb_size(path: Path) -> Tuple[int, int]:
    """The size of a photo that Pillow refuses to open as a decompression bomb."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            return image.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_device(name: str) -> None:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, where this machine has an NVIDIA driver
    (``/proc/driver/nvidia``); torch checks the rest when it loads.

    Raises:
        CommandError: another spelling, or CUDA on a machine without its driver.
    """
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise CommandError(f"--device {name}: not a device (cpu, cuda, cuda:N).")
    if name.startswith("cuda") and os.path.exists("/proc") and not os.path.exists("/proc/driver/nvidia"):
        raise CommandError(f"--device {name}: CUDA is not available on this machine.")


def check_weights(path: Optional[Path]) -> None:
    if path is not None and not path.is_file():
        raise CommandError(f"no weights file at {path}.")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> Tuple[str, ...]:
    """The 1000 ImageNet class names in output order, read from torchvision's installed
    ``models/_meta.py`` without importing torchvision (which loads torch)."""
    spec = importlib.util.find_spec("torchvision")
    source = Path(list(spec.submodule_search_locations)[0]) / "models" / "_meta.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_IMAGENET_CATEGORIES":
            return tuple(ast.literal_eval(node.value))
    raise CommandError(f"no ImageNet class list in {source}.")  # pragma: no cover - another torchvision


def model_classes(model: Optional[str]) -> Tuple[str, ...]:
    """The class names of ``--model`` without building it: the scene models' ten, ImageNet's
    for the others (a torchvision model of other classes names them by index after it loads)."""
    if model in ("cluttered_vgg", "cluttered_resnet"):
        from captum_feedback.data.fashion_mnist import CLASSES

        return tuple(CLASSES)
    return imagenet_classes()


@functools.lru_cache(maxsize=1)
def _wordnet_nouns() -> Dict[int, Tuple[List[str], List[int], str]]:
    """WordNet 3.0's noun synsets by offset: lemmas, hypernym offsets, gloss (empty without it)."""
    data = WORDNET / "data.noun"
    if not data.is_file():
        return {}
    synsets = {}
    for line in data.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        fields, _, gloss = line.partition(" | ")
        parts = fields.split()
        count = int(parts[3], 16)
        lemmas = [parts[4 + 2 * k].replace("_", " ").lower() for k in range(count)]
        rest = parts[4 + 2 * count:]
        pointers = int(rest[0])
        hypernyms = [int(rest[1 + 4 * k + 1]) for k in range(pointers) if rest[1 + 4 * k] in ("@", "@i")]
        synsets[int(parts[0])] = (lemmas, hypernyms, gloss.strip())
    return synsets


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> Tuple[Optional[int], ...]:
    """Each ImageNet class's WordNet noun offset, where WordNet is installed.

    ImageNet's classes are WordNet 3.0 synsets in increasing offset order, so each class is the
    first synset after the previous class's that has its name as a lemma (``None`` where none
    has: the name was changed from WordNet's)."""
    nouns = _wordnet_nouns()
    by_lemma: Dict[str, List[int]] = {}
    for offset in sorted(nouns):
        for lemma in nouns[offset][0]:
            by_lemma.setdefault(lemma, []).append(offset)
    found: List[Optional[int]] = []
    last = 0
    for name in imagenet_classes():
        later = [o for o in by_lemma.get(name.lower(), ()) if o > last]
        found.append(later[0] if later else None)
        last = later[0] if later else last
    return tuple(found)


def _class_words(index: int, name: str) -> Tuple[str, str]:
    """A class's words for search: its name, WordNet synonyms and ancestors' lemmas (up to
    seven levels), and its definition."""
    synsets = imagenet_synsets() if _wordnet_nouns() else ()
    offset = synsets[index] if index < len(synsets) else None
    if offset is None:
        return name.lower(), ""
    nouns = _wordnet_nouns()
    lemmas, _, gloss = nouns[offset]
    words, level = list(lemmas), [offset]
    for _ in range(7):
        level = [h for o in level for h in nouns[o][1]]
        words += [lemma for o in level for lemma in nouns[o][0]]
    return " | ".join([name.lower()] + words), gloss.lower()


def find_classes(query: str, classes: Sequence[str], limit: Optional[int] = None) -> List[int]:
    """Classes matching ``query``: the exact name first, then names with it as a word, then
    (for ImageNet's classes, with WordNet installed) classes whose synonyms or ancestors are
    named by it, then those whose definition mentions it, then names containing it anywhere;
    each group in output order."""
    wanted = query.lower().strip()
    pattern = re.compile(rf"\b{re.escape(wanted)}\b")
    imagenet = tuple(classes) == imagenet_classes()
    groups: List[List[int]] = [[], [], [], [], []]
    for index, name in enumerate(classes):
        words, gloss = _class_words(index, name) if imagenet else (name.lower(), "")
        if name.lower() == wanted:
            groups[0].append(index)
        elif pattern.search(name.lower()):
            groups[1].append(index)
        elif pattern.search(words):
            groups[2].append(index)
        elif pattern.search(gloss):
            groups[3].append(index)
        elif wanted in name.lower():
            groups[4].append(index)
    found = [index for group in groups for index in group]
    return found if limit is None else found[:limit]


def class_by_name(name: str, classes: Sequence[str]) -> int:
    """The class named ``name`` (case-insensitive).

    Raises:
        CommandError: no such class; the message suggests the closest (synonyms included).
    """
    lowered = [c.lower() for c in classes]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    close = [classes[k] for k in find_classes(name, classes, limit=6)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise CommandError(f"unknown class {name!r}.{hint} ('captum-feedback classes {name}' lists the matches.)")


def check_targets(spec: Iterable[str], classes: Sequence[str]) -> None:
    """``--target`` values: names, indices and ``topK`` for a model of ``classes`` (before it
    loads with the named model's classes, after with its own)."""
    for item in spec:
        top = re.fullmatch(r"top(\d+)", item.lower())
        if item.lower() == "auto":
            continue
        if top:
            if not 1 <= int(top.group(1)) <= len(classes):
                raise CommandError(f"--target {item}: K must lie in 1..{len(classes)} (the model has "
                                   f"{len(classes)} classes).")
        elif item.isdigit():
            if int(item) >= len(classes):
                raise CommandError(f"--target {item}: class index out of range (0..{len(classes) - 1}).")
        else:
            class_by_name(item, classes)


def list_classes(queries: Sequence[str], model: Optional[str]) -> None:
    """``captum-feedback classes``: the model's classes with their indices, all or each query's."""
    names = model_classes(model)
    for query in list(queries) or [None]:
        found = range(len(names)) if query is None else find_classes(query, names)
        if query is not None:
            print(f"{query}: {len(found)} classes" + (" (none; try a more general word)" if not found else ""))
        for index in found:
            print(f"{index:5d}  {names[index]}")
