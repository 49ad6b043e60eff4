"""HTTP resources: one module per resource, each with a `routes` RouteTableDef (see docs/server.md)."""
