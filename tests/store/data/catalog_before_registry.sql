-- A catalogue written by nxstore 21d5b3c, before each layer registered its own tables
-- (tests/store/test_catalog_registry.py): every table of that version, one row each, dumped
-- with sqlite3's iterdump. It must open and verify unchanged.
BEGIN TRANSACTION;
CREATE TABLE containers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    dedup INTEGER, compression INTEGER, verify_dedup INTEGER, ck INTEGER NOT NULL);
INSERT INTO "containers" VALUES(1,'sé',1,1,1,8557394921852092483);
CREATE TABLE generation (id INTEGER PRIMARY KEY, value INTEGER NOT NULL,
    ck INTEGER NOT NULL);
INSERT INTO "generation" VALUES(1,2,4670989025510749526);
CREATE TABLE layers (id INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER,
    frozen INTEGER, shortcut INTEGER, created_seq INTEGER, ck INTEGER NOT NULL);
INSERT INTO "layers" VALUES(1,3,1,3,3,1505266260513600201);
CREATE TABLE lws (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, pd_id INTEGER,
    seq INTEGER UNIQUE, created_at REAL, members TEXT, snapshot TEXT, ck INTEGER NOT NULL);
INSERT INTO "lws" VALUES(1,'sé',3,3,2.25,'sé','sé',8370857500185792409);
CREATE TABLE lws_episodes (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER,
    name TEXT, group_name TEXT, members INTEGER, seq INTEGER, prev_seq INTEGER, first INTEGER,
    created_at REAL, base_snapshot TEXT, compose_as TEXT, size INTEGER, file TEXT,
    ck INTEGER NOT NULL, UNIQUE (vdisk_id, seq));
INSERT INTO "lws_episodes" VALUES(1,3,'sé','sé',3,3,3,1,2.25,'sé','sé',3,'sé',-6255219463572161891);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('format_version','1');
INSERT INTO "meta" VALUES('block_size','65536');
INSERT INTO "meta" VALUES('cluster_id','''00000000000000000000000000000000''');
INSERT INTO "meta" VALUES('site_name','''a''');
INSERT INTO "meta" VALUES('created_at','1.5');
INSERT INTO "meta" VALUES('ck','-8090075082332326864');
CREATE TABLE nearsync (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    site TEXT, state TEXT, since REAL, shipped_seq INTEGER, shipped_at REAL, base_snapshot TEXT,
    base_seq INTEGER, history TEXT, ck INTEGER NOT NULL, UNIQUE (pd_id, site));
INSERT INTO "nearsync" VALUES(1,3,'sé','sé',2.25,3,2.25,'sé',3,'sé',-1146090089308093200);
CREATE TABLE pd_entities (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    kind TEXT, name TEXT, cg TEXT, ck INTEGER NOT NULL, UNIQUE (kind, name));
INSERT INTO "pd_entities" VALUES(1,3,'sé','sé','sé',-2764611396584539189);
CREATE TABLE pd_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    kind TEXT, site TEXT, step INTEGER, status TEXT, epoch INTEGER, snapshot TEXT, detail TEXT,
    error TEXT, started_at REAL, updated_at REAL, ck INTEGER NOT NULL);
INSERT INTO "pd_migrations" VALUES(1,3,'sé','sé',3,'sé',3,'sé','sé','sé',2.25,2.25,-9126167449419771526);
CREATE TABLE pd_replications (id INTEGER PRIMARY KEY AUTOINCREMENT,
    pd_snapshot_id INTEGER, site TEXT, replicated_at REAL, ck INTEGER NOT NULL,
    UNIQUE (pd_snapshot_id, site));
INSERT INTO "pd_replications" VALUES(1,3,'sé',2.25,-789644582568297401);
CREATE TABLE pd_schedules (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    every REAL, keep_local INTEGER, keep_remote TEXT, app_consistent INTEGER, enabled INTEGER,
    next_due REAL, last_run REAL, created_at REAL, ck INTEGER NOT NULL);
INSERT INTO "pd_schedules" VALUES(1,3,2.25,3,'sé',1,1,2.25,2.25,2.25,971390459090019321);
CREATE TABLE pd_snapshot_members (id INTEGER PRIMARY KEY AUTOINCREMENT,
    pd_snapshot_id INTEGER, snapshot_id INTEGER, vdisk_name TEXT, entity_kind TEXT,
    entity_name TEXT, cg TEXT, ck INTEGER NOT NULL);
INSERT INTO "pd_snapshot_members" VALUES(1,3,3,'sé','sé','sé','sé',2316047078133871356);
CREATE TABLE pd_snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    name TEXT, created_at REAL, schedule_id INTEGER, consistency TEXT, complete INTEGER,
    manifest TEXT, hook_failures TEXT, ck INTEGER NOT NULL, UNIQUE (pd_id, name));
INSERT INTO "pd_snapshots" VALUES(1,3,'sé',2.25,3,'sé',1,'sé','sé',-3995445090641317339);
CREATE TABLE protection_domains (id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL, state TEXT, owner_site TEXT, owner_cluster TEXT, epoch INTEGER,
    created_at REAL, ck INTEGER NOT NULL);
INSERT INTO "protection_domains" VALUES(1,'sé','sé','sé','sé',3,2.25,2379047319021891233);
CREATE TABLE remote_sites (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    address TEXT, secret TEXT, network_mapping TEXT, vstore_mapping TEXT, tls_ca TEXT,
    ck INTEGER NOT NULL);
INSERT INTO "remote_sites" VALUES(1,'sé','sé','sé','sé','sé','sé',-6732417109341327342);
CREATE TABLE replicas (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER UNIQUE,
    source_cluster TEXT, source_site TEXT, source_vdisk TEXT, ck INTEGER NOT NULL,
    UNIQUE (source_cluster, source_vdisk));
INSERT INTO "replicas" VALUES(1,3,'sé','sé','sé',-235783693899349117);
CREATE TABLE settings (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    value TEXT, ck INTEGER NOT NULL);
INSERT INTO "settings" VALUES(1,'sé','sé',8429319087556257457);
CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER, name TEXT,
    layer_id INTEGER, created_at REAL, size INTEGER, ck INTEGER NOT NULL,
    UNIQUE (vdisk_id, name));
INSERT INTO "snapshots" VALUES(1,3,'sé',3,2.25,3,663665326188395212);
CREATE TABLE vdisks (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    container_id INTEGER, size INTEGER, head_layer INTEGER, created_at REAL,
    read_only INTEGER, ck INTEGER NOT NULL);
INSERT INTO "vdisks" VALUES(1,'sé',3,3,3,2.25,1,3744746404034507120);
CREATE TABLE vms (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    vdisks TEXT, nics TEXT, categories TEXT, power TEXT, pre_freeze TEXT, post_thaw TEXT,
    hook_timeout REAL, created_at REAL, ck INTEGER NOT NULL);
INSERT INTO "vms" VALUES(1,'sé','sé','sé','sé','sé','sé','sé',2.25,2.25,-4769582869452435563);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('containers',1);
INSERT INTO "sqlite_sequence" VALUES('vdisks',1);
INSERT INTO "sqlite_sequence" VALUES('layers',1);
INSERT INTO "sqlite_sequence" VALUES('snapshots',1);
INSERT INTO "sqlite_sequence" VALUES('remote_sites',1);
INSERT INTO "sqlite_sequence" VALUES('replicas',1);
INSERT INTO "sqlite_sequence" VALUES('vms',1);
INSERT INTO "sqlite_sequence" VALUES('pd_migrations',1);
INSERT INTO "sqlite_sequence" VALUES('protection_domains',1);
INSERT INTO "sqlite_sequence" VALUES('pd_entities',1);
INSERT INTO "sqlite_sequence" VALUES('pd_schedules',1);
INSERT INTO "sqlite_sequence" VALUES('pd_snapshots',1);
INSERT INTO "sqlite_sequence" VALUES('pd_snapshot_members',1);
INSERT INTO "sqlite_sequence" VALUES('pd_replications',1);
INSERT INTO "sqlite_sequence" VALUES('lws',1);
INSERT INTO "sqlite_sequence" VALUES('nearsync',1);
INSERT INTO "sqlite_sequence" VALUES('lws_episodes',1);
INSERT INTO "sqlite_sequence" VALUES('settings',1);
COMMIT;
