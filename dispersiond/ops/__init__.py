"""The operations, one module each, shared by the commands (dispersiond/commands/, thin:
parse, call, print) and the daemon.

  protect      admit -> encode -> upload -> commit, and resume   (protect.py)
     encode    staging, planned names, early uploads               (encode.py)
     upload    the one upload routine; replace a copy under a fresh name (upload.py)
     finalize  after the uploads: backup if due, grants, done       (finalize.py)
  restore      the one k-of-n restorer over any ObjectSource        (restore.py)
  verify, repair, rotate_key, forget, rekey                         (one module each)
  share, open_share   the share package is their room (share.py, open_share.py say so)
  backup, recover     manifest backups and rebuilding a blank state (maintenance.py)

A file's layout has one shape, dispersiond/layout.py.
"""
