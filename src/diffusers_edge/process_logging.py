"""Per-process logging of the libraries underneath, as diffusers' training scripts set it.

Under `accelerate launch` / `torchrun` every process loads the same models; without this, N processes print N
copies of every warning and every "Loading weights" / "Loading pipeline components" bar.

Example:
    >>> from accelerate import PartialState
    >>> set_library_verbosity(PartialState().is_local_main_process)
"""

from __future__ import annotations

import datasets
import diffusers
import transformers


def set_library_verbosity(is_local_main_process: bool) -> None:
    """diffusers' per-process logging: the local main process shows warnings (diffusers: info) and loading bars,
    every other process only errors and no bars, so N processes do not print N copies of each loading bar.

    Example:
        >>> set_library_verbosity(accelerator.is_local_main_process)  # doctest: +SKIP
    """
    libraries = (datasets.utils.logging, transformers.utils.logging, diffusers.utils.logging)
    if is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
        for library in libraries:
            library.enable_progress_bar()
    else:
        for library in libraries:
            library.set_verbosity_error()
            library.disable_progress_bar()
