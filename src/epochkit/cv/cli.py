"""K-fold cross-validation (and the refit) from a LightningCLI config: ``python -m epochkit.cv --config config.yaml``.

The config is the project's LightningCLI config (``seed_everything``, ``model`` and ``data`` with ``class_path`` and
``init_args``, ``trainer`` with its callbacks, optimizer and LR scheduler sections) plus a ``cv:`` section with
:class:`~epochkit.cv.CrossValidator`'s arguments, and top-level ``refit: true|false`` (default true) and
``refit_epochs: kept|best|<int>`` (default ``kept``). Every key is also a flag (``--cv.n_splits 4``,
``--trainer.max_epochs 5``) and ``--print_config`` prints the whole config, as in LightningCLI, whose parser this is.

Running the same command again resumes: the finished folds and a finished refit are skipped, an interrupted fold or
refit resumes from its last epoch. That needs the same starting weights, so ``seed_everything`` defaults to 0 here
(LightningCLI's default, ``true``, draws a new seed each run).

A project with its own ``LightningCLI`` subclass (extra arguments, links, defaults) puts :class:`CrossValidationCLI`
first in a new class's bases and runs that::

    class MyCrossValidationCLI(CrossValidationCLI, MyLightningCLI):
        pass

    MyCrossValidationCLI(MyModel, MyDataModule)
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from epochkit.cv.refit import RefitResult
from epochkit.cv.results import CVResult
from epochkit.cv.validator import CrossValidator

__all__ = ["CrossValidationCLI", "main"]


def _trainer_defaults() -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(pl.Trainer.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


class CrossValidationCLI(LightningCLI):
    """A ``LightningCLI`` that cross-validates the configured model and DataModule (and refits) instead of fitting.

    It takes LightningCLI's arguments (``model_class``, ``datamodule_class``, ``trainer_defaults``, ``args``,
    ``parser_kwargs``, ...); ``subclass_mode_model`` and ``subclass_mode_data`` default to true (any
    ``class_path``), ``seed_everything_default`` to 0 and ``save_config_callback`` to ``None`` (each fold's
    Trainer is the CrossValidator's). After parsing it builds the model, the DataModule and a
    :class:`~epochkit.cv.CrossValidator` from the ``cv`` section, and runs
    :meth:`~epochkit.cv.CrossValidator.fit` with the ``trainer`` section as ``trainer_kwargs`` (the arguments that
    differ from the Trainer's defaults, callbacks included), then :meth:`~epochkit.cv.CrossValidator.refit` with
    ``epochs=refit_epochs`` unless ``refit: false``. The results are in ``result`` and ``refit_result``.

    Args:
        model_class: As LightningCLI's: a LightningModule class (or any, from the config's ``class_path``).
        datamodule_class: As LightningCLI's: a LightningDataModule class (or any, from the config's ``class_path``).
        run: Cross-validate right away (``False``: only parse and build; call :meth:`cross_validate`).
        kwargs: LightningCLI's arguments.
    """

    cv: CrossValidator
    trainer_kwargs: dict[str, Any]
    result: CVResult | None = None
    refit_result: RefitResult | None = None

    def __init__(
        self, model_class: Any = None, datamodule_class: Any = None, *, run: bool = True, **kwargs: Any
    ) -> None:
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_callback", None)
        super().__init__(model_class, datamodule_class, run=False, **kwargs)
        if run:
            self.cross_validate()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(CrossValidator, "cv", fail_untyped=False)
        parser.add_argument("--refit", type=bool, default=True, help="Train the model to ship after the folds.")
        parser.add_argument(
            "--refit_epochs",
            type=Literal["kept", "best"] | int,
            default="kept",
            help="The refit's epochs: 'kept', 'best' or an int (see CrossValidator.refit).",
        )

    def instantiate_classes(self) -> None:
        """Build the model, the DataModule and the CrossValidator; the Trainer settings become ``trainer_kwargs``
        (no Trainer is built here: each fold builds its own)."""
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self.cv = self._get(self.config_init, "cv")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        config = dict(self._get(self.config_init, "trainer", default={}))
        callbacks = config.pop("callbacks", None) or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        callbacks += [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        extra = self.trainer_defaults.get("callbacks") or []
        callbacks += [extra] if isinstance(extra, Callback) else list(extra)
        defaults = _trainer_defaults()
        self.trainer_kwargs = {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}
        if callbacks:
            self.trainer_kwargs["callbacks"] = callbacks

    def cross_validate(self) -> CVResult:
        """Run the folds (finished ones are skipped), then the refit unless ``refit: false``."""
        self.result = self.cv.fit(self.model, self.datamodule, trainer_kwargs=self.trainer_kwargs)
        if self._get(self.config, "refit"):
            self.refit_result = self.cv.refit(
                self.model, self.datamodule, epochs=self._get(self.config, "refit_epochs"), trainer_kwargs=None
            )
        return self.result


def main(args: list[str] | None = None) -> None:
    """``python -m epochkit.cv``: :class:`CrossValidationCLI` over any model and DataModule ``class_path``."""
    CrossValidationCLI(args=args)
