"""Plumbing every stage stands on, knowing nothing of genomics: paths on local disk or object
storage (:mod:`.fs`), checksummed and signed artifact files (:mod:`.artifacts`), typed JSON
documents with one format check (:mod:`.documents`), Ray start-up and a read-ahead thread
(:mod:`.runtime`), progress lines (:mod:`.progress`), free TCP ports for a server about to start
(:mod:`.ports`) and the shared exceptions (:mod:`.errors`)."""
