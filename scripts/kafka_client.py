"""An independent Kafka client (confluent-kafka) for tests and benchmarks.

  kafka_client.py produce BROKERS TOPIC FILE     one message per line of FILE (what a sensor sends)
  kafka_client.py drain BROKERS N TOPIC [TOPIC…] consume N messages, no processing; prints the rate
  kafka_client.py dump BROKERS TOPIC SECONDS     every message until SECONDS pass with none, as JSON
                                                 lines {"key": …, "value": …}
"""
import json
import sys
import time

from confluent_kafka import Consumer, Producer


def produce(brokers, topic, path):
    p = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "compression.type": "lz4",
                  "linger.ms": 20})
    failed = []
    n = 0

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            while True:
                try:
                    p.produce(topic, line, callback=report)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            p.poll(0)
    p.flush(60)
    if failed:
        sys.exit(f"{len(failed)} messages not delivered: {failed[0]}")
    print(f"produced {n}")


def drain(brokers, n, topics):
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"drain-{time.time()}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000,
                  "queued.min.messages": 500000, "queued.max.messages.kbytes": 131072})
    c.subscribe(topics)
    got, t0 = 0, None
    deadline = time.time() + 300
    while got < n and time.time() < deadline:
        for m in c.consume(10000, 1.0):
            if m.error():
                continue
            if t0 is None:
                t0 = time.perf_counter()
            got += 1
    secs = time.perf_counter() - t0
    c.close()
    print(f"drained {got} in {secs:.3f} s")


def dump(brokers, topic, quiet_s):
    c = Consumer({"bootstrap.servers": brokers, "group.id": f"dump-{time.time()}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([topic])
    last = time.time()
    while time.time() - last < quiet_s:
        for m in c.consume(1000, 0.5):
            if m.error():
                continue
            last = time.time()
            print(json.dumps({"key": m.key().decode(), "value": json.loads(m.value())}))
    c.close()


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "produce":
        produce(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        drain(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
