"""The cost model: device specs (this CPU measured, a registry of others), backend profiles and
the corrections tuning learnt, and the roofline that turns them into seconds per node."""
