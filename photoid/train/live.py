"""Per-epoch curves through dvclive, without dvclive touching dvc.yaml or making experiments."""

from __future__ import annotations

from pathlib import Path


class EpochLog:
    """``log(epoch, record)`` for :func:`photoid.train.loop.fit`: numbers go to dvclive plots."""

    def __init__(self, directory: Path):
        from dvclive import Live

        self.directory = Path(directory)
        self.live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None, monitor_system=False)

    def __call__(self, epoch: int, record: dict) -> None:
        self.live.step = epoch
        for name, value in record.items():
            if isinstance(value, (int, float)) and name != "epoch":
                self.live.log_metric(name, float(value))
            elif isinstance(value, dict):
                for sub, v in value.items():
                    self.live.log_metric(f"{name}/{sub}", float(v))
        self.live.next_step()

    def close(self) -> None:
        """End the log. dvclive's summary (``metrics.json`` beside ``plots/``) goes: the stage's own
        metrics file holds those figures, and in a folder dvc.yaml declares as plots it is a file DVC
        cannot draw ("argument of type 'NoneType' is not iterable" in every `dvc plots show`)."""
        self.live.end()
        (self.directory / "metrics.json").unlink(missing_ok=True)
