"""Operators' audit tools on the same core: export, replay, explain, report.

Nothing here re-implements the model or the engine. Every number is recomputed by
replaying ``margin.log`` entry by entry through :func:`stream.log.ordered_log.apply_entry`
(the loop :func:`stream.log.ordered_log.apply_record` runs in the worker) and, for one
account's components, :func:`stream.core.requirements.account_risk`.

Topics come either from the broker (:func:`stream.audit.inputs.read_broker`) or from an
export directory written by :func:`stream.audit.export.write_export` (``DIR/<topic>.jsonl``,
one message a line); both give the same :class:`stream.audit.export.TopicMessage` lists, so every
tool works on either. No faust import: the broker is read with plain aiokafka
(:mod:`stream.kafka.clients`), lazily.
"""
