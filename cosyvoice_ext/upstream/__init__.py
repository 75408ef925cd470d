"""The upstream subsystem: which CosyVoice commits are supported and how a tree at one of them gets
its patch series.

- `lockfile`  vendor.lock: supported commits, locked file hashes, series and patched hashes
- `pin`       content identities (git blob ids, sha256)
- `mirror`    where upstream comes from offline (COSYEXT_UPSTREAM_MIRROR, git bundles)
- `sources`   `cosyext vendor`: stage, verify, move into place
- `tree`      classify a tree's files and recognise which supported commit it is at
- `applied`   the record of what apply-patches did to a tree (like quilt's .pc/)
- `patching`  apply / revert / status of a commit's series, all or nothing
- `lockgen`   regenerate the lock entries from pristine trees
- `rebase`    replay a series onto a new upstream commit with 3-way merges (maintainers)
"""
