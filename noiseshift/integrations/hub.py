"""Hugging Face Hub ids (``ORG/NAME[@REVISION]``) for pipelines and VAEs, resolved through the
local Hugging Face cache, downloading only when the caller allows it.

    source = resolve("google/ddpm-cifar10-32")        # offline: from the cache or one line
    source.id, source.revision                         # the id and the snapshot's commit hash
    diffusers.DDPMPipeline.from_pretrained(source.id, **source.load_kwargs())

The cache is huggingface_hub's (``HF_HUB_CACHE``, else ``HF_HOME/hub``): one folder per repo,
``models--ORG--NAME/{refs/<branch>, snapshots/<commit>/...}``. The commit hash is read from the
path the cache hands back, so a run records the exact snapshot it sampled and a baseline
matches only a run of the same id *and* revision. A folder that exists on disk always wins over
an id of the same spelling. Offline is the default (``local_files_only=True``); with
``allow_download`` the hub client downloads what is missing, unless ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import NoiseshiftError
from . import require

# Hub repo ids: ORG/NAME with the hub's allowed characters, and an optional @revision.
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")


@dataclass(frozen=True)
class HubSource:
    """A repo id, its cached snapshot folder, the commit hash of that snapshot, and whether
    missing files may be downloaded."""

    id: str
    folder: Path
    revision: str
    allow_download: bool = False

    def load_kwargs(self) -> dict:
        """``from_pretrained`` keywords that pin every file to the resolved snapshot."""
        return {"revision": self.revision, "local_files_only": not self.allow_download}

    def describe(self) -> dict:
        return {"id": self.id, "revision": self.revision}


def hub_id(text) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``text`` is an id and not an existing path, else
    None."""
    text = str(text)
    if Path(text).exists() or not _ID.match(text):
        return None
    repo, _, revision = text.partition("@")
    return repo, revision or None


def resolve(text, *, allow_download: bool = False, files=("model_index.json",)) -> HubSource:
    """The cached snapshot of id ``text`` (``ORG/NAME[@REVISION]``) that holds the first of
    ``files`` found there; downloads that file first when ``allow_download``. One-line
    NoiseshiftError when the id is not cached (offline) or cannot be fetched."""
    parsed = hub_id(text)
    if parsed is None:
        raise NoiseshiftError(f"{text!r} is neither a folder nor a Hub id (ORG/NAME[@REVISION])")
    repo, revision = parsed
    require("diffusers")  # which brings the hub client
    client = require("huggingface_hub")
    not_there = require("huggingface_hub.errors").EntryNotFoundError
    failure = None
    for name in files:
        try:
            path = Path(client.hf_hub_download(repo, name, revision=revision,
                                               local_files_only=not allow_download))
        except not_there as e:  # cached repo, or one online, without this file
            failure = failure or e
            continue
        except Exception as e:  # the client raises many kinds: offline, not found, HTTP
            failure = e
            break
        snapshot = path.parents[len(Path(name).parts) - 1]
        return HubSource(repo, snapshot, snapshot.name, allow_download)
    raise _missing(repo, revision, allow_download, failure)


def _missing(repo: str, revision: str | None, allow_download: bool, e) -> NoiseshiftError:
    at = f"@{revision}" if revision else ""
    if not allow_download:
        rev = f" --revision {revision}" if revision else ""
        return NoiseshiftError(f"{repo}{at}: no such folder, and no such Hub id in the Hugging "
                               f"Face cache; fetch it once with `hf download {repo}{rev}`, "
                               f"or pass --allow-download")
    text = str(e).strip().splitlines()[0][:200] if e is not None and str(e).strip() else ""
    return NoiseshiftError(f"cannot fetch {repo}{at} from the Hub ({type(e).__name__}: {text})")


__all__ = ["HubSource", "hub_id", "resolve"]
