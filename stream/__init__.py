"""kpimargin: streaming initial-margin processor for bounded KPI futures.

The pure core (``model``, ``positions``, ``calls``, ``records``, ``engine``) imports no
Kafka or faust code; the streaming shell lives in ``stream.app`` and friends.
"""

__version__ = "0.1.0"
