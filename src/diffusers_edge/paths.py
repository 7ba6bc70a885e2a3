"""Where the library reads from: image paths in untrusted annotation files, model references, annotation text.

Annotation files (BLIP / Karpathy JSON, `metadata.jsonl`) usually come from somewhere else. A record naming
`"../../home/me/private.png"`, an absolute path or a symlink leading out of the image root would make the library
read, and `export_blip_json` re-publish, a file the annotation's author never had. `resolve_inside` keeps every
such path inside its root unless the caller opts out with `allow_outside_root=True`.

Example:
    >>> resolve_inside("data/flickr30k", "flickr30k-images/1000092795.jpg", record="train.json record 0")
    PosixPath('/abs/data/flickr30k/flickr30k-images/1000092795.jpg')
    >>> resolve_inside("data/flickr30k", "../secret.png", record="train.json record 1")
    Traceback (most recent call last):
    ValueError: train.json record 1: image path '../secret.png' resolves to '/abs/data/secret.png', outside ...
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id


def resolve_inside(
    root: str | os.PathLike, relative: str | os.PathLike, record: str, allow_outside_root: bool = False
) -> Path:
    """The absolute, symlink-free path of `relative` under `root`, refused if it leaves `root`.

    `..` components, absolute paths and symlinks (inside the root, pointing out of it) are all resolved before the
    check, so only a file that really lies under `root` passes.

    Args:
        root: the image root the annotation's paths are relative to.
        relative: the path the record names.
        record: how to name the record in the error (file and record number).
        allow_outside_root: accept paths that leave `root` (for images kept elsewhere on purpose).

    Returns:
        The resolved path.

    Raises:
        ValueError: the path resolves outside `root` and `allow_outside_root` is not set; the record is named.

    Example:
        >>> resolve_inside("images", "a/b.png", record="metadata.jsonl line 3").name
        'b.png'
    """
    root = Path(root).resolve()
    path = (root / relative).resolve()
    if allow_outside_root or path == root or root in path.parents:
        return path
    raise ValueError(
        f"{record}: image path {str(relative)!r} resolves to {str(path)!r}, outside the image root {str(root)!r}. "
        "Annotation files may only name images under their root; pass allow_outside_root=True if the images are "
        "kept elsewhere on purpose."
    )


def read_annotation_text(path: str | os.PathLike) -> str:
    """The text of an annotation file, which must be UTF-8 (as JSON is); a decoding error names the file and byte.

    Example:
        >>> read_annotation_text("annotations/flickr30k_train.json")[:1]
        '['
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text (byte {error.start} is {data[error.start : error.start + 1]!r}); "
            "JSON annotation files must be UTF-8. Re-save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`."
        ) from error


def check_model_reference(value: str | os.PathLike, flag: str) -> None:
    """Raises `FileNotFoundError` naming `flag` if `value` is neither an existing path nor a possible Hub repo id.

    A missing local folder such as `./tiny-bert` or `/models/clip` would otherwise reach `from_pretrained` as a
    repo id and fail with huggingface_hub's "Repo id must be in the form ..." message.

    Example:
        >>> check_model_reference("openai/clip-vit-base-patch32", "--clip_model_name_or_path")  # a Hub id: fine
        >>> check_model_reference("./no-such-folder", "--text_encoder")
        Traceback (most recent call last):
        FileNotFoundError: --text_encoder './no-such-folder' is not an existing folder or file, nor a Hub repo id ...
    """
    text = str(value)
    if Path(text).exists():
        return
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise FileNotFoundError(
            f"{flag} {text!r} is not an existing folder or file, nor a Hub repo id ('name' or 'namespace/name')."
        ) from None
    if text.startswith((".", "~")) or os.path.isabs(text):
        raise FileNotFoundError(f"{flag} {text!r} does not exist (it is a path, not a Hub repo id).")
