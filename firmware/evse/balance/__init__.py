# Load balancing between chargers over CAN (manual §8, §8.1.2 point 12;
# docs/load-balancing.md): codec (frames), allocate (the share), planner (the master's
# plan), members (members file, quorum), node (Balancer: one charger of the pool).
# Nothing is imported here: the app imports evse.balance.node only once load balancing
# is switched on, and each name re-exported would cost a dict entry on a frozen build.
