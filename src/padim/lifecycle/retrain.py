"""`Retraining`: a candidate version from the operators' labels, and the gate it must pass.

The candidate is the base version (production by default) updated exactly (`partial_fit`: the
same model as a fit on all images) with the images operators marked as false alarms that it
was not trained on yet; the update re-estimates the threshold on held-out images. Then the base
and the candidate both score every labelled image, and the gate is stated:

1. the candidate flags every confirmed or missed defect (and every defect image of the product
   added in the studio) that the base flags;
2. its false-alarm rate on its held-out good images is not above the upper end of the base's
   95 % interval (Clopper-Pearson) on its own.

The candidate is registered (parent: the base) with the report as its evaluation and put at the
`candidate` alias. Promoting a version whose gate failed to the alias the gate was for needs an
explicit override, which the audit trail keeps (`Registry.promote`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim import options
from padim.errors import PadimError
from padim.files import file_sha256
from padim.lifecycle.database import Catalogue
from padim.lifecycle.feedback import FALSE_ALARM, FeedbackBook, Labelled
from padim.lifecycle.registry import Registry, Version
from padim.model.calibration import clopper_pearson
from padim.progress import ProgressSink


@dataclass
class Retraining:
    """Retrain `product` from version `base` into a `alias` version (one object per job)."""

    catalogue: Catalogue
    product: str
    base: str = options.ALIAS.default
    alias: str = "candidate"
    gate_for: str = options.ALIAS.default
    device: str = "cpu"

    def run(self, actor: str, sink: ProgressSink | None = None) -> tuple[Version, dict[str, Any]]:
        """Build, evaluate, gate and register the candidate; (its version, the report).
        `sink` hears the stages (loading, update, gate, registering) and may raise to stop."""
        from padim.model.estimator import Padim

        say = sink or (lambda stage, done, total: None)
        registry = Registry(self.catalogue)
        base = registry.version(self.product, self.base)
        labelled = FeedbackBook(self.catalogue).labelled(self.product)
        labelled += product_defects(self.catalogue, self.product)
        trained = set(registry.image_digests(self.product, base.number))
        goods = [x for x in labelled if x.label == FALSE_ALARM]
        new = [x.image for x in goods if file_sha256(x.image) not in trained]
        if not new:
            raise PadimError(
                f"no false alarms of {self.product} that version {base.number} was not trained "
                "on: nothing to retrain with (operators mark them on the page or over REST)"
            )
        say("loading", 0, None)
        production = Padim.load(base.path, self.device)
        candidate = Padim.load(base.path, self.device, statistics=True)
        candidate.progress = sink or False
        candidate.partial_fit(new)
        candidate.progress = False
        say("gate", 0, len(labelled))
        report = gate(production, candidate, labelled, self.gate_for)
        report |= {"base": base.number, "added_false_alarms": len(new)}
        say("registering", 0, None)
        with tempfile.TemporaryDirectory() as tmp:
            path = candidate.save(Path(tmp) / f"{self.product}.safetensors")
            note = f"retrained from v{base.number} with {len(new)} false alarm(s)"
            version = registry.register(
                self.product, path, actor, note, parent=base.number, evaluation=report
            )
        registry.promote(self.product, version.number, actor, self.alias)
        return version, report


def retrain_job(url: str, files: str, product: str, actor: str, sink: ProgressSink) -> dict:
    """A studio job (`padim.service.jobs`): retrain `product` from production into the
    candidate alias; the report with the candidate's version number."""
    from padim.lifecycle.database import open_catalogue

    version, report = Retraining(open_catalogue(url, files), product).run(actor, sink)
    return {"product": product, "version": version.number, "alias": "candidate", **report}


def product_defects(catalogue: Catalogue, product: str) -> list[Labelled]:
    """The defective images of the product (added in the studio): labelled defects too."""
    from padim.lifecycle.workshop import DEFECT, Workshop

    shop = Workshop(catalogue)
    return [
        Labelled(
            record_id=0,
            product=product,
            version=None,
            verdict="",
            score=float("nan"),
            label="defect",
            image=catalogue.files / row["path"],
            mask=None if row["mask"] is None else catalogue.files / row["mask"],
            author=row["added_by"],
            image_id=row["id"],
        )
        for row in shop.images(product, DEFECT)
    ]


def flags(model: Any, images: list[Path]) -> np.ndarray:
    """Which images `model` calls anomalous at its own threshold."""
    if not images:
        return np.zeros(0, bool)
    scores, _ = model.score(images)
    return np.asarray(scores) > float(model.threshold_)


def held_out_false_alarms(model: Any) -> tuple[int, int]:
    scores = model.holdout_scores_.get(model.config.score_mode)
    if scores is None or len(scores) == 0:
        raise PadimError("the model keeps no held-out good scores: cannot state its false alarms")
    return int(np.sum(np.asarray(scores) > float(model.threshold_))), len(scores)


def gate(production: Any, candidate: Any, labelled: list[Labelled], alias: str) -> dict:
    """Both models on every labelled image, and the gate's two checks (module docstring)."""
    defects = [x for x in labelled if x.is_defect]
    goods = [x for x in labelled if not x.is_defect]
    caught = {
        name: flags(model, [x.image for x in defects])
        for name, model in (("production", production), ("candidate", candidate))
    }
    lost = [x for x, p, c in zip(defects, *caught.values(), strict=True) if p and not c]
    k_base, n_base = held_out_false_alarms(production)
    k_new, n_new = held_out_false_alarms(candidate)
    upper = clopper_pearson(k_base, n_base)[1]
    checks = [
        {
            "check": "catches every labelled defect the base version catches",
            "passed": not lost,
            "missed_records": [x.record_id for x in lost if x.image_id is None],
            "missed_product_images": [x.image_id for x in lost if x.image_id is not None],
        },
        {
            "check": "held-out false-alarm rate within the base version's 95 % interval",
            "passed": k_new / n_new <= upper,
            "candidate": round(k_new / n_new, 6),
            "base_upper": round(upper, 6),
        },
    ]
    summary = {}
    for name, model in (("production", production), ("candidate", candidate)):
        good_flags = flags(model, [x.image for x in goods])
        summary[name] = {
            "threshold": float(model.threshold_),
            "defects_caught": int(caught[name].sum()),
            "labelled_false_alarms": int(good_flags.sum()),
        }
    return {
        "gate": {"for": alias, "passed": all(c["passed"] for c in checks), "checks": checks},
        "labelled": {
            "defects": len(defects),
            "product_defects": sum(x.image_id is not None for x in defects),
            "false_alarms": len(goods),
        },
        **summary,
    }
