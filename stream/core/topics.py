"""Topic names (SPEC §4) and which of them concern every account.

Inputs keyed by account (fills, collateral) are routed to one partition of the ordered
log; inputs that concern every account (listing, flash, settlement, tick) are copied to
every partition of it, so each partition applies one total order of events.
"""

LISTINGS = "kpi.contracts"
FLASH = "kpi.flash"
SETTLEMENTS = "kpi.settlements"
TICKS = "clock.ticks"
FILLS = "trades.fills"
COLLATERAL = "collateral.movements"

REQUIREMENTS = "margin.requirements"
CALLS = "margin.calls"
DEADLETTER = "margin.deadletter"
# The processor's own ordered per-partition log (input events in the order applied).
LOG = "margin.log"

INPUT_TOPICS = (LISTINGS, FLASH, SETTLEMENTS, TICKS, FILLS, COLLATERAL)
BROADCAST_TOPICS = (LISTINGS, FLASH, SETTLEMENTS, TICKS)
ACCOUNT_TOPICS = (FILLS, COLLATERAL)
OUTPUT_TOPICS = (REQUIREMENTS, CALLS, DEADLETTER)
