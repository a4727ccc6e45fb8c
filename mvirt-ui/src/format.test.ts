import { describe, expect, it } from 'vitest';
import { bytes, parseLabels, validateCidr4, validateCidr6, validateInt, validateLabels, validateName } from './format';

describe('validation', () => {
  it('names are DNS labels', () => {
    expect(validateName('web-1')).toBeUndefined();
    expect(validateName('')).toMatch(/required/);
    expect(validateName('Web')).toBeDefined();
    expect(validateName('-a')).toBeDefined();
    expect(validateName('a'.repeat(64))).toBeDefined();
  });
  it('prefixes and numbers', () => {
    expect(validateCidr4('10.0.0.0/24')).toBeUndefined();
    expect(validateCidr4('10.0.0.300/24')).toBeDefined();
    expect(validateCidr4('10.0.0.0/33')).toBeDefined();
    expect(validateCidr4('', true)).toBeDefined();
    expect(validateCidr6('fd00::/64')).toBeUndefined();
    expect(validateCidr6('fd00::')).toBeDefined();
    expect(validateInt('4', 1, 8, 'x')).toBeUndefined();
    expect(validateInt('0', 1, 8, 'x')).toMatch(/between 1 and 8/);
    expect(validateInt('1.5', 1, 8, 'x')).toMatch(/whole number/);
  });
  it('labels', () => {
    expect(validateLabels('a=b,c=d')).toBeUndefined();
    expect(validateLabels('a')).toBeDefined();
    expect(parseLabels('zone=a, rack = 3')).toEqual({ zone: 'a', rack: '3' });
  });
  it('formats sizes', () => {
    expect(bytes(256 * 1024 * 1024)).toBe('256 MiB');
    expect(bytes(1536)).toBe('1.5 KiB');
  });
});

import { fillSnapshotPath } from './pages/Volumes';
describe('snapshot action paths', () => {
  it('fill the volume and snapshot ids into the spec path', () => {
    expect(fillSnapshotPath('/v1/volumes/{id}/snapshots/{snapshot_id}/rollback', 'v1', 's 2')).toBe('/v1/volumes/v1/snapshots/s%202/rollback');
  });
});
