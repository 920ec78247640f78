"""One-time environment set-up: the WordNet corpus that nltk's METEOR needs, installed offline when possible.

Order of attempts (the first that works wins):
1. nltk already finds a complete WordNet (`corpora/wordnet` with `lexnames` and `index.sense`).
2. Debian/Ubuntu: `apt-get download wordnet-base wordnet-sense-index` (no root needed) and unpack with
   `dpkg-deb -x`. Those packages hold Princeton WordNet 3.0, the data `nltk.download("wordnet")` serves;
   the `lexnames` file nltk also needs is rebuilt from the package's own `lexnames(5WN)` man page.
3. `nltk.download("wordnet")` (needs internet).

The corpus lands in `<sys.prefix>/nltk_data`, which is on nltk's default search path for this interpreter, so
no `NLTK_DATA` variable is needed. The directory is built beside its final place and renamed into it, so an
interrupted set-up leaves nothing half-written.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEBIAN_PACKAGES = ("wordnet-base", "wordnet-sense-index")
_WORDNET_FILES = re.compile(
    r"^(data|index)\.(noun|verb|adj|adv)$|^(noun|verb|adj|adv)\.exc$|^index\.sense$|^cntlist\.rev$"
)
_SYNCAT = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def default_nltk_dir() -> Path:
    """The nltk data directory inside the running environment (on nltk's default search path)."""
    return Path(sys.prefix) / "nltk_data"


def wordnet_dir_is_complete(path: Path) -> bool:
    required = ["lexnames", "index.sense", "data.noun", "index.noun", "noun.exc", "data.verb", "data.adj", "data.adv"]
    return all((path / name).is_file() and (path / name).stat().st_size > 0 for name in required)


def find_wordnet() -> Path | None:
    """Return the WordNet directory nltk would load, or None when nltk cannot find a complete one."""
    import nltk

    for root in nltk.data.path:
        candidate = Path(root) / "corpora" / "wordnet"
        if candidate.is_dir() and wordnet_dir_is_complete(candidate):
            return candidate
    return None


def lexnames_from_manpage(text: str) -> str:
    """Build nltk's `lexnames` file ("NN\\tname\\tsyncat" lines) from the lexnames(5WN) man page source."""
    rows = []
    for line in text.splitlines():
        match = re.match(r"^(\d\d)\t((?:noun|verb|adj|adv)\.\w+)", line)
        if match:
            number, name = match.groups()
            rows.append(f"{number}\t{name}\t{_SYNCAT[name.split('.')[0]]}")
    if len(rows) != 45:
        raise ValueError(f"expected 45 lexicographer files in the lexnames man page, found {len(rows)}")
    return "\n".join(rows) + "\n"


def _install_from_debian(staging: Path) -> bool:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            ["apt-get", "download", *DEBIAN_PACKAGES], cwd=tmp, capture_output=True, text=True, check=False
        )
        debs = sorted(Path(tmp).glob("*.deb"))
        if result.returncode != 0 or len(debs) != len(DEBIAN_PACKAGES):
            logger.warning("apt-get download %s failed: %s", " ".join(DEBIAN_PACKAGES), result.stderr.strip())
            return False
        unpacked = Path(tmp) / "root"
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        source = unpacked / "usr" / "share" / "wordnet"
        for item in source.iterdir():
            if _WORDNET_FILES.match(item.name):
                shutil.copy2(item, staging / item.name)
        manpage = unpacked / "usr" / "share" / "man" / "man5" / "lexnames.5WN.gz"
        (staging / "lexnames").write_text(lexnames_from_manpage(gzip.decompress(manpage.read_bytes()).decode()))
    return wordnet_dir_is_complete(staging)


def _install_from_nltk(target_root: Path) -> bool:
    import nltk

    try:
        return bool(nltk.download("wordnet", download_dir=str(target_root), quiet=True, raise_on_error=True))
    except Exception as err:  # network errors come in many types; any of them means "not this way"
        logger.warning("nltk.download('wordnet') failed: %s", err)
        return False


def ensure_wordnet(target_root: Path | None = None) -> Path:
    """Make WordNet 3.0 loadable by nltk; return its directory.

    Raises:
        RuntimeError: when no source worked, with the commands that fix it.
    """
    found = find_wordnet()
    if found is not None:
        return found
    target_root = target_root or default_nltk_dir()
    final = target_root / "corpora" / "wordnet"
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=final.parent))
    try:
        if _install_from_debian(staging):
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            return final
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if _install_from_nltk(target_root) and find_wordnet() is not None:
        return find_wordnet()
    raise RuntimeError(
        "WordNet (needed by METEOR) could not be installed. Either run `apt-get download wordnet-base "
        "wordnet-sense-index` on a Debian-like machine, or `python -c \"import nltk; nltk.download('wordnet')\"` "
        f"with internet access, then run `perpo setup` again. Looked in: {target_root}"
    )


def check_wordnet() -> str:
    """Load WordNet the way METEOR does and return a one-line description (raises if it cannot)."""
    from nltk.corpus import wordnet

    synsets = wordnet.synsets("sofa")
    if not any("couch" in s.lemma_names() for s in synsets):
        raise RuntimeError("WordNet loaded but 'sofa' has no synonym 'couch': the corpus is incomplete")
    return f"WordNet {wordnet.get_version()} at {find_wordnet()}"
