"""Every on-disk and on-wire constant of nxstore, each with its unit.

Changing a format constant means bumping the matching *_VERSION below and
teaching the reader the old one (or refusing it with FormatError).
"""

# --- cluster ---------------------------------------------------------------
CLUSTER_FORMAT_VERSION = 1          # catalogue/meta layout version (meta.format_version)
MIN_BLOCK_SIZE = 4 * 1024           # bytes; 2**12
MAX_BLOCK_SIZE = 64 * 1024          # bytes; 2**16
DEFAULT_BLOCK_SIZE = 16 * 1024      # bytes; 2**14
# bytes: the catalogue keeps sizes as signed 64-bit integers, and an end rounded up to a
# whole block (of any size) must fit too
MAX_VDISK_SIZE = 2**63 - MAX_BLOCK_SIZE
LOCK_FILE = "LOCK"                  # fcntl lock held by the one writer process
CATALOG_FILE = "catalog.db"         # SQLite (WAL) catalogue
CATALOG_GENERATION_FILE = "catalog.gen"  # the newest committed catalogue generation, twice
CATALOG_GENERATION_VERSION = 1

# --- fingerprints ------------------------------------------------------------
FINGERPRINT_BYTES = 16              # XXH3-128, canonical (big-endian) form

# --- OpLog -------------------------------------------------------------------
OPLOG_DIR = "oplog"
OPLOG_FORMAT_VERSION = 2
OPLOG_SEGMENT_BYTES = 64 * 1024 * 1024      # bytes; a segment is closed past this size
OPLOG_CAP_BYTES = 1024 * 1024 * 1024        # bytes; writers block above this (back-pressure)
OPLOG_DRAIN_START_BYTES = 256 * 1024 * 1024  # bytes; background drain starts above this
OPLOG_BYPASS_BYTES = 256 * 1024             # bytes; block-aligned writes this large skip the OpLog
OPLOG_DRAIN_INTERVAL_S = 5.0                # seconds between background drains when idle
OPLOG_DIRTY_CAP_BYTES = 512 * 1024 * 1024   # bytes; RAM for undrained (dirty) blocks
OPLOG_BUFFER_BYTES = 1024 * 1024            # bytes; appended records are written out early past this
OPLOG_INDEX_STRIDE_BYTES = 256 * 1024      # bytes; RAM seq->offset index: one entry per this much log

# --- extent store --------------------------------------------------------------
EXTENT_DIR = "extents"
EXTENT_FORMAT_VERSION = 1
EXTENT_GROUP_BYTES = 64 * 1024 * 1024       # bytes; an extent group file is closed past this
COMPRESS_MIN_SAVING = 8                     # store compressed only if it saves >= 1/8 of the block
GC_COMPACT_DEAD_FRACTION = 0.25             # compact an extent group once 1/4 of it is garbage
EXTENT_TABLE_FILE = "extent_table.bin"      # checkpoint of the extent table (in EXTENT_DIR)
SALVAGE_DIR = "salvaged"                    # in oplog/ and extents/: bytes recovery cut off, kept
ID_FLOOR_FILE = "idfloor.bin"               # extent ids below this may have been handed out
ID_FLOOR_VERSION = 1
ID_FLOOR_STEP = 4096                        # ids reserved per floor update; a crash skips at most this many (33 B of table RAM each)
RELOCATE_BATCH_BYTES = 16 * 1024 * 1024     # bytes; relocate copies and syncs this much per lock hold

# --- sealed extent groups on object storage (nxstore/store/group_backend.py) ---------
EXTENT_BACKEND_FILE = "backend.conf"        # in EXTENT_DIR: where sealed groups live; absent = local
EXTENT_BACKEND_VERSION = 1
EXTENT_CACHE_DIR = "cache"                  # in EXTENT_DIR: the read cache of remote sealed groups
S3_CACHE_BYTES = 1024 * 1024 * 1024         # bytes; default bound of that read cache
S3_UPLOAD_PENDING_GROUPS = 4                # sealed groups awaiting upload before puts wait

# --- block maps ----------------------------------------------------------------
MAP_DIR = "maps"
MAP_FORMAT_VERSION = 2
MAP_DELTA_COMPACT_RATIO = 0.25       # rewrite a layer's base once its delta log is 1/4 its size
MAP_DELTA_COMPACT_MIN_BYTES = 1024 * 1024  # bytes; a delta log below this is never compacted
CHAIN_COLLAPSE_DEPTH = 8             # layers a read may fall through before a collapse

# --- defragmentation (nxstore/store/defrag.py) ----------------------------------------
DEFRAG_WINDOW_BYTES = 1024 * 1024    # bytes of a vDisk image judged as one unit (a 1 MiB read)
# preadv runs a window's read may take before it is repaired (to ~2): each costs ~2.2 us,
# so 9+ runs add >= ~10% to the ~200 us of a 1 MiB read; fewer are not worth moving data for
DEFRAG_MAX_RUNS = 8
DEFRAG_MAX_BYTES = 1024 * 1024 * 1024   # bytes; default cap of records moved per defragment call
DEFRAG_DRAIN_MAX_BYTES = 256 * 1024 * 1024  # bytes; cap of records a drain moves after a collapse

# --- fingerprint index -------------------------------------------------------------
INDEX_FILE = "fpindex.bin"
INDEX_FORMAT_VERSION = 1
INDEX_MAX_LOAD = 0.70                # open-addressing table grows past this load factor

# --- native ------------------------------------------------------------------
INDEX_BLOB_MAGIC = b"NXFPIDX\0"     # 8 bytes; starts FingerprintIndex.to_bytes()
INDEX_BLOB_VERSION = 1              # layout of to_bytes(): docs/format.md
INDEX_BLOB_HEADER_BYTES = 48        # bytes before the slot array
INDEX_SLOT_BYTES = 24               # bytes per slot: 16 fingerprint + 8 id (u64 LE); id 0 = empty

# --- replication wire --------------------------------------------------------------
# Layout and meaning: docs/format.md. Code: nxstore/replication/.
WIRE_MAGIC = b"NXRP"                # 4 bytes; starts every frame
WIRE_PROTOCOL_VERSION = 5           # frame layout + message set version this build speaks
WIRE_PRUNE_BY_NAME_VERSION = 3      # first version with PRUNE_SNAPSHOTS (prune by name)
WIRE_VERIFY_VERSION = 4             # first version with VERIFY_REQUEST/REPLY (replica verify)
WIRE_STORED_BLOCKS_VERSION = 4      # first version with STORED_BLOCKS (blocks as stored, lz4 kept)
WIRE_METRO_BARRIER_VERSION = 5      # first version with a flush barrier inside METRO_WRITES
WIRE_GMAC_VERSION = 5               # first version whose frame tags are AES-256-GMAC, not HMAC
WIRE_MIN_PROTOCOL_VERSION = 2       # oldest version this build still speaks (1 had no frame MAC)
WIRE_FRAME_HEADER_BYTES = 48        # bytes before the payload
WIRE_MAC_BYTES = 16                 # frame tag: HMAC-SHA256 truncated to 128 bits
WIRE_MAX_FRAME_PAYLOAD = 16 * 1024 * 1024   # bytes; 2**24, both as sent and uncompressed
WIRE_COMPRESS_MIN_PAYLOAD = 4 * 1024        # bytes; smaller payloads are never compressed
WIRE_NONCE_BYTES = 32               # handshake nonce (os.urandom)
WIRE_PROOF_BYTES = 32               # HMAC-SHA256 output
WIRE_MAX_STRING_BYTES = 4096        # bytes of UTF-8 in any string field
WIRE_MAX_BATCH = 4096               # fingerprints / blocks / map entries per batch message
WIRE_BLOCKS_BATCH_BYTES = 4 * 1024 * 1024  # bytes of block data per BLOCKS message the source sends
WIRE_DEFAULT_WINDOW = 8             # data requests a sender keeps in flight (credit)
WIRE_ACK_EVERY = 4                  # a receiver acknowledges at least every N data requests
WIRE_HANDSHAKE_TIMEOUT_S = 10.0     # seconds for the whole handshake, each side
WIRE_HANDSHAKE_MAX_PAYLOAD = 8 * 1024       # bytes; frame limit before a direction is keyed
WIRE_MAX_CONNECTIONS = 64           # connections a server holds; more are closed at once
WIRE_MAX_UNAUTHENTICATED = 16       # of them still in the handshake; the oldest is closed first
WIRE_WRITE_HIGH_WATER = 4 * 1024 * 1024     # bytes buffered in the socket writer before drain blocks
WIRE_READ_LIMIT = 1024 * 1024       # bytes; asyncio StreamReader buffer limit
WIRE_BANDWIDTH_CHUNK = 64 * 1024    # bytes; a rate-limited frame is paced in pieces this large

# --- Metro witness ---------------------------------------------------------------
# Layout and meaning: docs/format.md "Metro witness". Code: nxstore/metro/witness*.py.
WITNESS_STATE_FILE = "witness.state"   # in the witness's data directory
WITNESS_STATE_MAGIC = b"NXWITNS\0"     # 8 bytes; checksummed-file magic of the state file
WITNESS_STATE_VERSION = 1              # layout of the state file's payload
WITNESS_SITE = "witness"               # the witness's site name in the replication handshake
WITNESS_MAX_PAIRS = 4096               # Metro pairs one witness holds; more are refused
WITNESS_IDLE_TIMEOUT_S = 60.0          # seconds a connection may sit without a request
WITNESS_TIMEOUT_S = 5.0                # seconds a client call may take (connect included)
WITNESS_MAX_EPOCH = 2**63 - 1          # epochs are 1..this (a catalogue INTEGER)

# --- NearSync (light-weight snapshots) -------------------------------------------
# Layout and meaning: docs/format.md "NearSync". Code: nxstore/nearsync/.
NEARSYNC_DIR = "nearsync"              # target: received LWS episode files (E<seq>.lws per replica)
NEARSYNC_EPISODE_MAGIC = b"NXLWSEP\0"  # 8 bytes; checksummed-file magic of an episode file
NEARSYNC_EPISODE_VERSION = 1           # layout of an episode file's payload
NEARSYNC_MAX_INTERVAL_S = 900.0        # seconds; a schedule this frequent or more runs as NearSync
NEARSYNC_MIN_INTERVAL_S = 1.0          # seconds; the shortest NearSync schedule interval
NEARSYNC_LAG_THRESHOLD_S = 3600.0      # seconds; shipping further behind than this falls back
NEARSYNC_COMPOSE_EVERY_S = 3600.0      # seconds between vDisk snapshots the remote composes
NEARSYNC_SHIP_TIMEOUT_S = 60.0         # seconds one shipping round may take before it is abandoned
NEARSYNC_OPLOG_SHARE = 0.5             # fraction of OPLOG_CAP_BYTES NearSync retention may pin
NEARSYNC_HISTORY = 200                 # state transitions kept per (PD, remote site)
