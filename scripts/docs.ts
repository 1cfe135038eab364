import { readFileSync, writeFileSync } from 'node:fs';
import { updateReadme } from '../src/config/docs.ts';

const file = new URL('../README.md', import.meta.url);
writeFileSync(file, updateReadme(readFileSync(file, 'utf8')));
process.stdout.write('README.md options table regenerated from src/config/schema.ts\n');
