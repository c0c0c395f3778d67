-- A refused command's google.rpc.ErrorInfo (issue 16): a submitted command
-- refused as a stale read (reason STALE_READ, with the current version and
-- the position to read again at) keeps those details, so GetCommandStatus
-- and a retry with the same command_id report them as the direct call did.
-- An encoded hotel.v1.CommandError holding only `reason` and `metadata`.
ALTER TABLE commands ADD COLUMN error_info BLOB NULL;
