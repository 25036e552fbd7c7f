"""Read a TensorBoard log directory back with TensorBoard's own ``EventAccumulator``."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

# SummaryWriter.add_text(tag, ...) stores the summary under this suffix.
_TEXT_SUFFIX = "/text_summary"


@dataclass
class TensorBoardRun:
    """Everything in a log directory: ``scalars[tag]``, ``text[tag]`` and ``images[tag]`` (the encoded PNG) as
    ``(step, value)`` lists by step."""

    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    text: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    images: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)

    def image_arrays(self, tag: str) -> list[np.ndarray]:
        """The images logged under one tag in step order, decoded to ``height x width x channels`` uint8 arrays;
        a missing tag lists the tags that exist."""
        from PIL import Image

        if tag not in self.images:
            raise KeyError(f"no image tag {tag!r}; the run has {sorted(self.images)}")
        return [np.asarray(Image.open(io.BytesIO(png))) for _, png in self.images[tag]]

    def scalar_values(self, tag: str) -> list[float]:
        """The values of one scalar tag in step order; a missing tag lists the tags that exist."""
        if tag not in self.scalars:
            raise KeyError(f"no scalar tag {tag!r}; the run has {sorted(self.scalars)}")
        return [value for _, value in self.scalars[tag]]

    def text_values(self, tag: str) -> list[str]:
        """The texts logged under one tag in step order; a missing tag lists the tags that exist."""
        if tag not in self.text:
            raise KeyError(f"no text tag {tag!r}; the run has {sorted(self.text)}")
        return [value for _, value in self.text[tag]]


def read_tensorboard(log_dir: str | Path) -> TensorBoardRun:
    """Load every event file under ``log_dir`` (recursively), keeping all events (``size_guidance`` 0).

    Raises:
        FileNotFoundError: If there is no event file under ``log_dir``.
    """
    event_dirs = sorted({p.parent for p in Path(log_dir).rglob("events.out.tfevents.*")})
    if not event_dirs:
        raise FileNotFoundError(f"no TensorBoard event file under {log_dir}")
    scalars: dict[str, list[tuple[int, float]]] = defaultdict(list)
    text: dict[str, list[tuple[int, str]]] = defaultdict(list)
    images: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    for event_dir in event_dirs:
        acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags["scalars"]:
            scalars[tag].extend((e.step, float(e.value)) for e in acc.Scalars(tag))
        for tag in tags["images"]:
            images[tag].extend((e.step, e.encoded_image_string) for e in acc.Images(tag))
        for tag in tags["tensors"]:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "text":
                continue
            name = tag.removesuffix(_TEXT_SUFFIX)
            for event in acc.Tensors(tag):
                values = tensor_util.make_ndarray(event.tensor_proto).reshape(-1)
                text[name].append((event.step, "\n".join(v.decode("utf-8") for v in values)))
    # Stable sort by step: several event files may each hold part of a tag.
    return TensorBoardRun(
        scalars={k: sorted(v, key=_step) for k, v in scalars.items()},
        text={k: sorted(v, key=_step) for k, v in text.items()},
        images={k: sorted(v, key=_step) for k, v in images.items()},
    )


def _step(event: tuple[int, object]) -> int:
    return event[0]


def read_plugin_summaries(log_dir: str | Path, plugin: str) -> list[tuple[str, bytes]]:
    """``(tag, plugin content)`` of every summary value of one TensorBoard plugin (``"custom_scalars"``,
    ``"hparams"``) under ``log_dir``, read raw with TensorBoard's ``EventFileLoader``, in file order."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = []
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == plugin:
                    content = value.metadata.plugin_data.content
                    if plugin == "custom_scalars" and not content:
                        content = value.tensor.string_val[0] if value.tensor.string_val else b""
                    found.append((value.tag, content))
    return found
