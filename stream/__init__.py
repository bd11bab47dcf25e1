"""kpimargin: streaming initial-margin processor for bounded KPI futures.

The pure layers (``stream.core``: the model and the engine; ``stream.log``: the ordered
log) import no Kafka or faust code; the streaming shell is ``stream.kafka`` and
``stream.worker``; the README's "Repository" section draws the layers.
"""

__version__ = "0.1.0"
