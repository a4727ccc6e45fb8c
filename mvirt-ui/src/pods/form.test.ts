import { describe, expect, it } from 'vitest';
import {
  emptyContainer,
  emptyCredential,
  emptyPodForm,
  formOk,
  parseEnv,
  parsePorts,
  podCreateBody,
  validateImage,
  validatePodForm,
  type PodForm,
} from './form';

const form = (over: Partial<PodForm> = {}): PodForm => ({
  ...emptyPodForm(),
  name: 'web',
  containers: [{ ...emptyContainer('httpd'), image: '127.0.0.1:5000/httpd:1' }],
  ...over,
});

describe('pod form validation', () => {
  it('accepts a minimal pod', () => {
    expect(formOk(validatePodForm(form()))).toBe(true);
  });

  it('says what is wrong with the pod and each container', () => {
    const e = validatePodForm(
      form({
        name: 'Web_1',
        hostname: '-x',
        vcpus: '0',
        memoryMib: '32',
        labels: 'a=b,c',
        containers: [
          {
            ...emptyContainer('db'),
            image: 'a b',
            command: 'sh -c "x',
            env: 'OK=1\nB AD=2',
            workingDir: 'srv',
            cpuMillis: '0',
            memoryMib: '1024',
            ports: '80,http:99999',
          },
          { ...emptyContainer('db'), image: '' },
        ],
      }),
    );
    expect(formOk(e)).toBe(false);
    expect(e.name).toMatch(/lowercase letters/);
    expect(e.hostname).toMatch(/DNS label/);
    expect(e.vcpus).toMatch(/between 1 and 64/);
    expect(e.memoryMib).toMatch(/between 128/);
    expect(e.labels).toMatch(/"c" is not key=value/);
    expect(e.container[0]).toMatchObject({
      image: expect.stringMatching(/no spaces/),
      command: expect.stringMatching(/unclosed " quote/),
      env: expect.stringMatching(/"B AD" is not a variable name/),
      workingDir: 'an absolute path (starting with /)',
      cpuMillis: expect.stringMatching(/between 1 and 256000/),
      ports: expect.stringMatching(/"http:99999"/),
    });
    // The pod's memory is itself invalid: the container limit is not compared with it.
    expect(e.container[0].memoryMib).toBeUndefined();
    expect(e.container[1]).toMatchObject({ name: 'two containers are named db', image: expect.stringMatching(/required/) });
  });

  it('refuses a container memory limit above the pod, a pod without containers, a duplicated variable', () => {
    const e = validatePodForm(form({ memoryMib: '256', containers: [{ ...emptyContainer('a'), image: 'x', memoryMib: '512', env: 'A=1\nA=2' }] }));
    expect(e.container[0].memoryMib).toBe("more than the pod's 256 MiB");
    expect(e.container[0].env).toBe('A is set twice');
    expect(validatePodForm(form({ containers: [] })).containers).toMatch(/at least one container/);
    const many = Array.from({ length: 17 }, (_, i) => ({ ...emptyContainer(`c${i}`), image: 'x' }));
    expect(validatePodForm(form({ containers: many })).containers).toMatch(/at most 16/);
  });

  it('checks registry credentials: a username needs its password, a token goes alone', () => {
    let n = 0;
    const cred = (over: Partial<ReturnType<typeof emptyCredential>>) => ({ ...emptyCredential(), registry: `10.0.0.${++n}:5000`, ...over });
    const e = validatePodForm(
      form({
        credentials: [
          cred({ username: 'u' }),
          cred({ token: 't', password: 'p' }),
          cred({}),
          cred({ registry: 'host/path', token: 't' }),
          cred({ username: 'u', password: 'p' }),
          cred({ registry: 'r2', token: 't' }),
          cred({ registry: 'r2', token: 't' }),
        ],
      }),
    );
    expect(e.credential[0].password).toMatch(/password is required/);
    expect(e.credential[1].token).toMatch(/not both/);
    expect(e.credential[2].username).toMatch(/or a token is required/);
    expect(e.credential[3].registry).toMatch(/host\[:port\]/);
    expect(e.credential[4]).toEqual({});
    expect(e.credential[5]).toEqual({});
    expect(e.credential[6].registry).toBe('credentials for r2 are given twice');
  });

  it('image references: no control characters, at most 255 bytes', () => {
    expect(validateImage('reg:5000/a/b:1@sha256:' + 'a'.repeat(64))).toBeUndefined();
    expect(validateImage('a\u0007b')).toMatch(/control/);
    expect(validateImage('a'.repeat(256))).toMatch(/255 bytes/);
    expect(validateImage('ü'.repeat(128))).toMatch(/255 bytes/);
  });

  it('parses env and ports', () => {
    expect(parseEnv('A=1\n\nB= two = x \r\nC=')).toEqual({ env: { A: '1', B: ' two = x ', C: '' } });
    expect(parseEnv('novalue').error).toMatch(/not KEY=value/);
    expect(parsePorts('http:80, 53/udp 8080/tcp')).toEqual({
      ports: [
        { name: 'http', container_port: 80, protocol: 'tcp' },
        { container_port: 53, protocol: 'udp' },
        { container_port: 8080, protocol: 'tcp' },
      ],
    });
    expect(parsePorts('0').error).toBeDefined();
    expect(parsePorts('80/sctp').error).toBeDefined();
    expect(parsePorts('80 web:80/tcp').error).toBe('80/tcp is listed twice');
    expect(parsePorts('80 80/udp').error).toBeUndefined();
  });
});

describe('pod create body', () => {
  it('is the contract shape: containers, owned NICs with groups, selector, credentials with secrets', () => {
    const body = podCreateBody(
      form({
        hostname: 'h1',
        vcpus: '2',
        memoryMib: '1024',
        labels: 'app=web, tier=front',
        nodeSelector: ' zone=a ',
        start: false,
        networks: ['n1', 'n2'],
        securityGroups: ['g1'],
        containers: [
          {
            ...emptyContainer('web'),
            image: ' 127.0.0.1:5000/httpd:1 ',
            command: 'httpd -f',
            args: `-c "a b"`,
            env: 'K=V',
            workingDir: '/srv',
            cpuMillis: '500',
            memoryMib: '128',
            restartPolicy: 'on_failure',
            ports: 'http:80',
          },
          { ...emptyContainer('side'), image: 'busybox', restartPolicy: 'never' },
        ],
        credentials: [
          { registry: '10.0.0.1:5000', username: 'u', password: 'p', token: '' },
          { registry: 'r2', username: '', password: '', token: 'tok' },
        ],
      }),
      'team',
    );
    expect(body).toEqual({
      name: 'web',
      project: 'team',
      labels: { app: 'web', tier: 'front' },
      spec: {
        vcpus: 2,
        memory_bytes: 1024 << 20,
        hostname: 'h1',
        node_selector: 'zone=a',
        desired_state: 'stopped',
        network_interfaces: [
          { network_id: 'n1', security_group_ids: ['g1'] },
          { network_id: 'n2', security_group_ids: ['g1'] },
        ],
        containers: [
          {
            name: 'web',
            image: '127.0.0.1:5000/httpd:1',
            command: ['httpd', '-f'],
            args: ['-c', 'a b'],
            env: { K: 'V' },
            working_dir: '/srv',
            cpu_millis: 500,
            memory_bytes: 128 << 20,
            restart_policy: 'on_failure',
            ports: [{ name: 'http', container_port: 80, protocol: 'tcp' }],
          },
          { name: 'side', image: 'busybox', command: [], args: [], env: {}, restart_policy: 'never', ports: [] },
        ],
        registry_credentials: [
          { registry: '10.0.0.1:5000', username: 'u', password: 'p' },
          { registry: 'r2', token: 'tok' },
        ],
      },
    });
  });
});
