/** One line of log text as a source delivers it, before any rule has looked at it. */
export interface SourceLine {
  /** The line without its newline (and without a trailing \r), already cut to MAX_LINE_BYTES. */
  text: string;
  /** Where it came from: a file path, or `journal:<rule>`. */
  source: string;
  /**
   * When the source itself knows the time of the line (the journal's __REALTIME_TIMESTAMP), in ms since the epoch.
   * Absent for file lines: the rule's time capture is used, or the arrival time.
   */
  time?: number;
  /** The logging process, when the source knows it (the journal's _PID). */
  pid?: number;
}

/** Where a source stopped reading, persisted so that a restart resumes instead of re-reading. */
export interface Position {
  /** Inode of the file that was being read (0 for the journal). */
  inode: number;
  /** Byte offset of the first unread byte. */
  offset: number;
  /** A hash of the file's first line, to tell a rotated file that reused the inode from the same file. */
  fingerprint: string;
  /** The journal cursor of the last entry read (journal sources only). */
  cursor?: string;
}

export interface PositionStore {
  getPosition(key: string): Position | undefined;
  setPosition(key: string, pos: Position): void;
}

export interface SourceStatus {
  name: string;
  kind: 'file' | 'journal';
  /** Files being followed now, with their offsets; or the journal cursor. */
  files: { path: string; inode: number; offset: number }[];
  cursor?: string;
  linesRead: number;
  error?: string;
}

/**
 * A source pushes batches of lines to the pipeline. Positions are reported with each batch and must only be
 * persisted by the caller after the batch has been processed, so a crash re-reads rather than loses lines.
 */
export interface Source {
  readonly name: string;
  start(sink: (lines: SourceLine[], positions: Map<string, Position>) => void): Promise<void>;
  stop(): Promise<void>;
  status(): SourceStatus;
}

/** Lines longer than this are cut: attackers control log text and must not make us buffer without bound. */
export const MAX_LINE_BYTES = 8192;
