"""Run logs: `train.csv` and `val.csv` in the run folder, plus TensorBoard events when the
`tensorboard` package is installed (otherwise a one-line notice and CSV only)."""
import csv
import logging
import os

logger = logging.getLogger(__name__)


def truncate_csv(path, last_step):
    """Drop the rows logged after `last_step`: a resumed run writes them again."""
    if not os.path.isfile(path):
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= last_step]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(kept)


class CsvLog:
    def __init__(self, path, columns, resume_step):
        self.path, self.columns = path, ["step"] + list(columns)
        truncate_csv(path, resume_step)
        if os.path.isfile(path):
            with open(path, newline="") as handle:
                header = next(csv.reader(handle), None)
            if header != self.columns:
                raise ValueError(f"{path} has columns {header}, this run logs {self.columns}: "
                                 "resume with the same Stage II switches or use a new output_dir")
        else:
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)

    def write(self, step, values):
        row = [step] + [_format(values.get(name)) for name in self.columns[1:]]
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow(row)


def _format(value):
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def tensorboard_writer(folder):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.warning("tensorboard is not installed: logging to CSV only (the `[train]` extra installs it: "
                       "pip install 'sigma-fast[train]')")
        return None
    return SummaryWriter(folder)


class RunLog:
    """Rank 0's logs; a no-op on the other ranks."""

    def __init__(self, run_dir, train_columns, val_columns, resume_step, enabled):
        self.enabled = enabled
        if not enabled:
            return
        self.train_csv = CsvLog(os.path.join(run_dir, "train.csv"), train_columns, resume_step)
        self.val_csv = CsvLog(os.path.join(run_dir, "val.csv"), val_columns, resume_step)
        self.tensorboard = tensorboard_writer(os.path.join(run_dir, "tensorboard"))

    def _log(self, csv_log, prefix, step, values):
        if not self.enabled:
            return
        csv_log.write(step, values)
        if self.tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{prefix}/{name}", value, step)

    def train(self, step, values):
        self._log(self.train_csv if self.enabled else None, "train", step, values)

    def val(self, step, values):
        self._log(self.val_csv if self.enabled else None, "val", step, values)

    def close(self):
        if self.enabled and self.tensorboard is not None:
            self.tensorboard.close()
