"""OCI runtime-spec types: ``config.json`` parsed once into typed, frozen
config (:mod:`pyrun.oci.spec`), checked by a separate pass
(:mod:`pyrun.oci.validate`), and the default spec (:mod:`pyrun.oci.default`)."""
