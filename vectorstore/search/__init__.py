"""Search over one store's table: filters compiled to SQL, and the ranking statement."""
