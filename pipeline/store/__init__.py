"""The on-disk contract: names, manifests, commit records, seals, atomic writes, every reader
(``schema``), the output lease (``lease``) and garbage collection under it (``gc``). Imports no
Ray; ``schema.read_features`` builds a Ray Dataset and imports Ray only when called."""
