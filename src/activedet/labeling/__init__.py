"""The human-in-the-loop side of activedet: a labeling project over a real pool.

``select`` trains on the labeled set and writes the next batch (CSV, COCO with the model's
detections as pre-annotations, Label Studio tasks + labeling config); ``ingest`` merges
what the annotators produced (Label Studio JSON or COCO) back into the labeled set;
``export`` writes the whole labeled set as one COCO file. The loop's oracle step is
replaced by a person; training and selection are the same code as ``simulate``
(:func:`activedet.loop.runner.train_model`, :func:`activedet.loop.runner.select_batch`).
"""

from activedet.labeling.export import export_project
from activedet.labeling.ingest import ingest
from activedet.labeling.project import select

__all__ = ["select", "ingest", "export_project"]
