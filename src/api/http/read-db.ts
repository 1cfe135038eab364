/*
 * The API's own read-only connection to the daemon's SQLite store. Reads never go through the daemon's connection,
 * so an API request can never be inside (or hold open) one of the daemon's write transactions; in WAL mode it sees
 * every committed change at once. Rows are mapped to the store's own BanRecord, so the API shows bans exactly as
 * `tsfilter list` and `tsfilter explain` do.
 */
import Database from 'better-sqlite3';
import { BAN_COLUMNS, SCHEMA_VERSION, type BanRow } from '../../store/sqlite-store.ts';

export type { BanRow };

export type Db = Database.Database;

export interface ReadDb {
  readonly db: Db;
  /** The column list every ban query selects (see BanRow). */
  readonly columns: string;
  /** Changes whenever another connection (the daemon) commits: a cheap "has anything changed?" check. */
  dataVersion(): number;
  close(): void;
}

export function openReadDb(file: string): ReadDb {
  let db: Db;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true });
    db.pragma('busy_timeout = 1000');
  } catch (e) {
    throw new Error(`cannot open the store ${file} read-only: ${(e as Error).message}`);
  }
  try {
    // The daemon opens (and migrates) the store before it starts the API, so anything else is not our store.
    const schema = db.pragma('user_version', { simple: true }) as number;
    if (schema !== SCHEMA_VERSION) throw new Error(`its schema version is ${schema}, not ${SCHEMA_VERSION} (start the daemon once to create or upgrade it)`);
    const version = db.prepare('PRAGMA data_version').pluck();
    return {
      db,
      columns: BAN_COLUMNS,
      dataVersion: () => version.get() as number,
      close: () => db.close(),
    };
  } catch (e) {
    db.close();
    throw new Error(`cannot use the store ${file}: ${(e as Error).message}`);
  }
}
