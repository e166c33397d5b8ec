"""The vector store and its query path: both backends, filters, the search plan, snapshot archives."""
