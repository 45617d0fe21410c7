"""A declarative task as the Pods receive it: the task file and the model file it names, read from the
Pulumi project (``federation.task.source`` is relative to the repository root, or absolute), checked
whole (services/tasks/spec.py and allowlist.py: pydantic, PyYAML and JSON, no TensorFlow) and shipped
in one immutable ConfigMap mounted at :data:`infra.layout.TASK_DIR`. Pure Python, no Pulumi."""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from infra import layout
from infra.stack_files import REPO_ROOT
from services.common.config import TaskSettings
from services.tasks.allowlist import check_model_json
from services.tasks.spec import TaskError, read_task_file

# A ConfigMap holds at most 1 MiB (data and binaryData together, binaryData base64-encoded); keep room
# for the keys and the metadata.
MAX_BYTES = 1_000_000
KEY = "federation.task.source"


class TaskBundleError(ValueError):
    """A task file the program cannot ship: (key, message) as the stack-config errors name them."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.key, self.message = KEY, message


@dataclass(frozen=True)
class TaskBundle:
    """The files of a declarative task: ConfigMap key -> (path below TASK_DIR, content)."""

    task_key: str
    text: dict[str, str]  # UTF-8 files (the task file, a JSON model config)
    binary: dict[str, bytes]  # a .keras file
    paths: dict[str, str]  # key -> path below TASK_DIR

    @property
    def digest(self) -> str:
        """SHA-256 over every file: the Pod template annotation that rolls the Pods on a change."""
        h = hashlib.sha256()
        for key in sorted(self.paths):
            content = self.text[key].encode() if key in self.text else self.binary[key]
            h.update(f"{key}\0{self.paths[key]}\0{len(content)}\0".encode())
            h.update(content)
        return h.hexdigest()

    @property
    def mounted_task_file(self) -> str:
        return posixpath.join(layout.TASK_DIR, self.paths[self.task_key])

    def binary_data(self) -> dict[str, str]:
        return {k: base64.b64encode(v).decode() for k, v in self.binary.items()}


def _size(text: dict[str, str], binary: dict[str, bytes]) -> int:
    return sum(len(k) + len(v.encode()) for k, v in text.items()) + sum(
        len(k) + 4 * ((len(v) + 2) // 3) for k, v in binary.items()
    )


def _check_keras(content: bytes, where: str) -> None:
    """A .keras file is a zip whose config.json is the architecture: the same allowlist applies."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            config = archive.read("config.json")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise TaskError(f"{where}: not a .keras file with a config.json ({exc})") from None
    check_model_json(config, f"{where} (config.json)")


def read_bundle(task: TaskSettings, root: Path = REPO_ROOT) -> TaskBundle | None:
    """The bundle of a task-file task (None for digits and module tasks, which live in the image);
    :class:`TaskBundleError` naming the fix when the files cannot be shipped."""
    if task.kind != "file":
        return None
    path = root / task.source
    try:
        spec, base = read_task_file(path)
    except TaskError as exc:
        raise TaskBundleError(f"{exc} (the path is relative to the Pulumi project root, {root})") from None
    model = spec.model.config or spec.model.keras
    assert model is not None
    relative = PurePosixPath(model)
    if relative.is_absolute() or ".." in relative.parts:
        raise TaskBundleError(
            f"task file {path}: model path {model!r} must lie beside or below the task file (relative, no '..'): "
            "the two are mounted together"
        )
    model_path = base / relative
    try:
        content = model_path.read_bytes()
    except OSError as exc:
        raise TaskBundleError(f"task file {path}: cannot read its model file {model_path} ({exc.strerror})") from None
    try:
        if spec.model.config is not None:
            check_model_json(content, str(model_path))
        else:
            _check_keras(content, str(model_path))
    except TaskError as exc:
        raise TaskBundleError(f"{exc}: only built-in Keras layers may ship as a task file; use a module task "
                              "(in the image) for custom code") from None
    task_key, model_key = path.name, relative.name
    if task_key == model_key:
        raise TaskBundleError(f"task file {path} and its model file share the name {task_key!r}: rename one")
    text = {task_key: path.read_text()}
    binary: dict[str, bytes] = {}
    if spec.model.config is not None:
        text[model_key] = content.decode()
    else:
        binary[model_key] = content
    if (size := _size(text, binary)) > MAX_BYTES:
        raise TaskBundleError(
            f"task file {path} and its model {model_path} take {size} bytes in a ConfigMap, over the "
            f"{MAX_BYTES} it may hold (1 MiB): shrink the model, or ship it in the image as a module task "
            "(docs/kubernetes.md, 'A module task')"
        )
    return TaskBundle(task_key, text, binary, {task_key: task_key, model_key: str(relative)})
