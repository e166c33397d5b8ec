"""The gRPC service: one door for every call (identity, site wall, cost, audit), the searches and pushes."""
