"""All-or-nothing publication of several outputs (directories or files) at once.

Outputs are written under exact hidden sibling names (`.NAME.tuneledger-new`), then published by
renames that a journal makes all-or-nothing: the journal is written before the first rename, and
whoever next publishes the same outputs finishes an interrupted publication first (roll forward).
After a kill at any point, the next publication therefore starts from the complete old outputs
or the complete new ones. Only the exact names listed here are ever removed: a sibling that merely
looks similar (`.models.backup/`) is never touched.

POSIX has no rename of several paths at once, and DVC and the readers of a deploy directory need
the real paths (no symlink indirection), hence this small journal rather than a library call.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tuneledger.core.errors import TuneLedgerError
from tuneledger.core.faults import fault_point
from tuneledger.core.fsutil import DISK_FULL, disk_space_errors, write_text_atomic

NEW = ".tuneledger-new"
OLD = ".tuneledger-old"
JOURNAL = ".tuneledger-publish.json"


def staged_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{NEW}")


def _old_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{OLD}")


def journal_path(first: Path) -> Path:
    return first.with_name(f".{first.name}{JOURNAL}")


def _remove(path: Path) -> None:
    """Remove one of our own exact staging names, whether a file or a directory."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Publication:
    """Outputs staged side by side, published together by `commit()` or not at all.

    Entering finishes a publication of the same outputs that a kill interrupted, then clears
    staging names left by a failed run. Leaving with an exception discards what was staged.
    """

    def __init__(self, *targets: str | Path):
        self.targets = [Path(t) for t in targets]
        self.journal = journal_path(self.targets[0])
        self.committed = False

    def __enter__(self) -> Publication:
        return self.begin()

    def begin(self) -> Publication:
        """Finish an interrupted publication of these outputs, and clear a failed run's staging."""
        roll_forward(self.journal)
        for target in self.targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove(staged_path(target))
            _remove(_old_path(target))
        fault_point("publish:begun")
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is not None and not self.committed:
            for target in self.targets:
                _remove(staged_path(target))
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                what = " and ".join(f"the new {t}" for t in self.targets)
                with disk_space_errors(self.targets[0].parent, what):
                    raise error
            return
        if not self.committed:
            self.commit()

    def staged_dir(self, target: str | Path) -> Path:
        """The new content of a directory output: an empty directory to fill."""
        path = self._staged(target)
        with disk_space_errors(path.parent, f"the new {target}"):
            path.mkdir()
        return path

    def staged_file(self, target: str | Path) -> Path:
        """Where to write the new content of a file output."""
        return self._staged(target)

    def _staged(self, target: str | Path) -> Path:
        if Path(target) not in self.targets:
            raise ValueError(f"{target} is not an output of this publication")
        return staged_path(Path(target))

    def commit(self) -> None:
        missing = [str(t) for t in self.targets if not os.path.lexists(staged_path(t))]
        if missing:
            raise TuneLedgerError(f"nothing was staged for {', '.join(missing)}; nothing was published")
        fault_point("publish:staged")
        with disk_space_errors(self.journal.parent, "the publication journal"):
            write_text_atomic(self.journal, json.dumps({"targets": [str(t) for t in self.targets]}))
        self.committed = True
        fault_point("publish:journal")
        roll_forward(self.journal)


def roll_forward(journal: Path) -> None:
    """Finish the publication this journal records (nothing if there is none).

    A target whose staged name still exists is not yet replaced: move the current content aside,
    then the new one in. Each step can be repeated after a kill, so this can always be rerun.
    """
    if not journal.exists():
        return
    targets = [Path(t) for t in json.loads(journal.read_text())["targets"]]
    for index, target in enumerate(targets):
        staged, old = staged_path(target), _old_path(target)
        if not os.path.lexists(staged):
            continue
        if os.path.lexists(target):
            os.replace(target, old)
            fault_point(f"publish:aside:{index}")
        _publish_mode(staged)
        os.replace(staged, target)
        fault_point(f"publish:moved:{index}")
    for target in targets:
        _remove(_old_path(target))
    fault_point("publish:cleaned")
    journal.unlink()


def _publish_mode(staged: Path) -> None:
    """Libraries write some files 0600 and temp directories 0700; a published output is readable."""
    umask = os.umask(0)
    os.umask(umask)
    if staged.is_dir():
        os.chmod(staged, 0o777 & ~umask)


class StageOutputs(Publication):
    """A pipeline stage's outputs: staged files whose bytes the DVC cache already holds are
    published as hard links to those cache objects.

    Before a stage runs, DVC replaces its persisted outputs by private copies (unprotect), and after
    it, DVC links a file to the cache only when it stores a new object. A file rebuilt byte for
    byte (the base, when only the data changed) would stay a second full copy beside the cache.
    Linking is safe because no stage writes into a file it did not just create.
    """

    def __init__(self, *targets: str | Path, written_in_place: tuple[Path, ...] = ()):
        super().__init__(*targets)
        self.written_in_place = written_in_place  # outputs a library writes directly (checkpoints)

    def commit(self) -> None:
        _link_to_dvc_cache(*(staged_path(target) for target in self.targets), *self.written_in_place)
        super().commit()


def _link_to_dvc_cache(*paths: Path) -> None:
    """Replace each file under paths whose bytes the DVC cache holds by a hard link to that object."""
    cache = _dvc_cache()
    if cache is not None:
        for path in paths:
            _link_cached(path, cache)


def _dvc_cache():
    """The project's local DVC cache, or None outside a DVC project."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(os.getcwd()) as repo:
            return repo.cache.local
    except NotDvcRepoError:
        return None


def _link_cached(root: Path, cache) -> None:
    from dvc_data.hashfile.hash import file_md5

    files = [root] if root.is_file() else [f for f in root.rglob("*") if f.is_file() and not f.is_symlink()]
    for path in files:
        cached = Path(cache.oid_to_path(file_md5(str(path), name=cache.hash_name)))  # DVC's own hash
        if not cached.is_file() or cached.stat().st_size != path.stat().st_size:
            continue
        link = path.with_name(f".{path.name}.tuneledger-link")
        try:
            os.link(cached, link)
        except OSError:  # another filesystem, or no hard links there: keep the copy
            continue
        os.replace(link, path)
