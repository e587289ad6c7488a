"""Tools: registry, retrieval, plans and the DAG executor."""
