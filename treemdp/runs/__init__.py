"""The infrastructure every package shares, apart from the math.

- ``files``: atomic writes, temporaries, sha256 manifests (what survives a kill);
- ``tables``: tidy CSV tables and ``config.json`` with full float precision, checked on read;
- ``folders``: run folders named from their config, reused when complete, diverged runs saved;
- ``locks``: one writer per run folder;
- ``cli``: command lines from frozen config dataclasses (``from treemdp.runs.cli import ...``);
- ``eval_table``: the columns every LLM ``eval.csv`` has (written by ``llm``, read by ``figures``);
- ``experiment``: the cached, locked, divergence-aware run of an experiment (``cached_run``);
- ``backends``: a grid's cells run serially or as Ray tasks (``map_cells``; Ray imported only
  when used).

The engine (``treemdp.tree``, ``policy``, ``objectives``, ``train``, ...) does no I/O and never
imports this package, but for ``treemdp.problem``'s ``ProblemSpec``, whose fields carry their
command-line metadata (``cli.arg``). ``cli``, ``eval_table`` and ``experiment`` are imported by
their module name; ``experiment`` imports the training loop, so it is not re-exported here.
"""

from treemdp.runs.files import (
    MANIFEST,
    atomic_write,
    atomic_write_text,
    file_sha256,
    is_temporary,
    missing_files,
    read_checked,
    remove_temporaries,
    temporary_path,
    verify_file,
    verify_folder,
    verify_listing,
    write_checked,
    write_listing,
)
from treemdp.runs.folders import (
    cached_tables,
    find_runs,
    number_name,
    run_folder,
    save_diverged,
)
from treemdp.runs.locks import LOCK_NAME, RunFolderBusyError, run_lock
from treemdp.runs.tables import (
    config_dict,
    config_matches,
    read_config,
    read_table,
    write_config,
    write_table,
)

__all__ = [
    "LOCK_NAME",
    "MANIFEST",
    "RunFolderBusyError",
    "atomic_write",
    "atomic_write_text",
    "cached_tables",
    "config_dict",
    "config_matches",
    "file_sha256",
    "find_runs",
    "is_temporary",
    "missing_files",
    "number_name",
    "read_checked",
    "read_config",
    "read_table",
    "remove_temporaries",
    "run_folder",
    "run_lock",
    "save_diverged",
    "temporary_path",
    "verify_file",
    "verify_folder",
    "verify_listing",
    "write_checked",
    "write_config",
    "write_listing",
    "write_table",
]
