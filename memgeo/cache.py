"""The one result cache of every analysis (geometry, simulated capacity, gradients, rewinding, the
methods page's checks).

An entry is a folder ``<root>/<kind>/<key>/`` holding ``key.json`` (what the key stands for) and
one CSV file per table of the result. The key is a short hash of four things:

- ``kind``: which analysis (``"geometry"``, ``"rewind"``, ...), also the folder the entry sits in;
- ``settings``: every analysis setting that changes the numbers (settings that only change speed
  or memory, such as batch sizes and thread counts, stay out);
- ``seed``: the seed of the analysis's own random draws (None when it draws nothing);
- ``version``: a number the analysis's code declares and bumps when the same settings start
  giving other numbers, so that results of older code are never reused.

For an analysis of a run the root is the run folder (``ResultCache.of_run``); results that belong
to no run sit under ``<runs>/cache/`` (``cached_table``).

Results are computed in chunks (an epoch; an (epoch, layer, type) triple): `missing` lists the
chunks not stored yet, and `add` merges the rows of new chunks into the stored table and rewrites
it atomically (temporary file, then rename). An interrupted analysis therefore resumes at the first
chunk it had not written, and `add` re-reads the table before it writes, so two processes adding
different chunks in turn keep each other's rows. Tables are written with pandas' shortest exact
float format and read back exactly (pandas 3 parses floats round-trip): a stored number equals
the computed one (tested).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from .paths import runs_dir
from .runs import atomic_write_text

KEY_FILE = "key.json"


def cache_key(kind: str, settings: Mapping[str, Any], seed: int | None, version: int) -> str:
    """Short hash (10 hex digits) of what a result depends on."""
    blob = json.dumps({"kind": kind, "settings": dict(settings), "seed": seed, "version": version},
                      sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _chunk(row, columns: Sequence[str]) -> tuple:
    return tuple(row[c] for c in columns)


class ResultCache:
    """One cached result: the tables an analysis computed for one key (see the module docstring).

    `guard`: a file that must still exist when a table is written (a run's config.json), so that an
    analysis whose run folder was deleted meanwhile does not recreate a stray folder."""

    def __init__(self, root, kind: str, settings: Mapping[str, Any], *, seed: int | None, version: int,
                 guard: Path | None = None):
        self.kind = kind
        self.settings = dict(settings)
        self.seed = seed
        self.version = int(version)
        self.key = cache_key(kind, self.settings, seed, self.version)
        self.folder = Path(root) / kind / self.key
        self.guard = guard

    @classmethod
    def of_run(cls, run, kind: str, settings: Mapping[str, Any], *, seed: int | None, version: int) -> "ResultCache":
        """The entry for an analysis of `run`, inside its folder: ``<run>/<kind>/<key>/``."""
        return cls(run.path, kind, settings, seed=seed, version=version, guard=run.path / "config.json")

    def path(self, table: str = "table") -> Path:
        return self.folder / f"{table}.csv"

    def has(self, table: str = "table") -> bool:
        return self.path(table).exists()

    def read(self, table: str = "table") -> pd.DataFrame:
        """The stored table (an empty DataFrame when there is none yet)."""
        p = self.path(table)
        return pd.read_csv(p) if p.exists() else pd.DataFrame()

    def write(self, table: str, frame: pd.DataFrame) -> pd.DataFrame:
        """Store `frame` as `table` (atomically), with key.json beside it; returns `frame`."""
        if self.guard is not None and not self.guard.exists():
            raise FileNotFoundError(f"{self.guard.parent} is no longer a run folder (deleted meanwhile?): "
                                    f"not writing {self.kind}/{self.key}/{table}.csv")
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / KEY_FILE
        if not key_file.exists():
            atomic_write_text(key_file, json.dumps({"kind": self.kind, "settings": self.settings, "seed": self.seed,
                                                    "version": self.version}, indent=2, default=list))
        atomic_write_text(self.path(table), frame.to_csv(index=False))
        return frame

    def stored_chunks(self, table: str, columns: Sequence[str]) -> set:
        t = self.read(table)
        if t.empty:
            return set()
        return {_chunk(r, columns) for r in t[list(columns)].to_dict("records")}

    def missing(self, table: str, chunks: Iterable, columns: Sequence[str]) -> list:
        """The chunks (tuples of values of `columns`, or single values for one column) that
        `table` does not hold yet, in the order given."""
        have = self.stored_chunks(table, columns)
        out = []
        for c in chunks:
            t = c if isinstance(c, tuple) else (c,)
            if t not in have:
                out.append(c)
        return out

    def add(self, table: str, rows: pd.DataFrame, columns: Sequence[str],
            order: Sequence[str] | None = None) -> pd.DataFrame:
        """Merge `rows` into the stored `table` and write it: stored rows of the chunks in `rows`
        (equal values in `columns`) are replaced, the new rows come after the others, then the
        table is sorted (stably) by the columns `order` if given. Returns the table as written."""
        stored = self.read(table)
        if stored.empty:
            merged = rows.reset_index(drop=True)
        else:
            new = {_chunk(r, columns) for r in rows[list(columns)].to_dict("records")}
            keep = [_chunk(r, columns) not in new for r in stored[list(columns)].to_dict("records")]
            merged = pd.concat([stored[keep], rows], ignore_index=True)
        if order:
            merged = merged.sort_values(list(order), kind="stable").reset_index(drop=True)
        return self.write(table, merged)

    def get(self, compute: Callable[[], pd.DataFrame], table: str = "table") -> pd.DataFrame:
        """The stored table, or `compute()` stored (for results computed in one piece)."""
        if self.has(table):
            return self.read(table)
        return self.write(table, compute())


def cached_table(kind: str, settings: Mapping[str, Any], compute: Callable[[], pd.DataFrame], *,
                 seed: int | None, version: int, root=None) -> pd.DataFrame:
    """A table that belongs to no run (e.g. the methods page's checks), computed once and kept
    under ``<runs>/cache/<kind>/<key>/``."""
    root = Path(root) if root is not None else runs_dir() / "cache"
    return ResultCache(root, kind, settings, seed=seed, version=version).get(compute)
