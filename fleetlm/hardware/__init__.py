"""Hardware awareness: device catalog, roofline performance model, calibration on this
machine, a cost planner over heterogeneous devices (scipy MILP), and a discrete-event
simulator that validates each plan. Nothing here needs a GPU."""
