/** An element of an IndexedHeap: it remembers its own slot so it can move in O(log n). */
export interface HeapNode {
  pos: number
}

/**
 * A binary min-heap whose nodes know their position, so a node whose key changed is moved
 * with `update` in O(log n) and removed with `remove` without a search. A subclass gives the
 * order as a method (rather than a function passed in), so each kind of heap has its own
 * comparison that the compiler can inline.
 */
export abstract class IndexedHeap<N extends HeapNode> {
  readonly items: N[] = []

  /** Whether `a` comes out before `b`. */
  protected abstract less(a: N, b: N): boolean

  get size(): number {
    return this.items.length
  }

  peek(): N | undefined {
    return this.items[0]
  }

  push(node: N): void {
    node.pos = this.items.length
    this.items.push(node)
    this.up(node.pos)
  }

  remove(node: N): void {
    const i = node.pos
    const last = this.items.pop() as N
    node.pos = -1
    if (last !== node) {
      this.items[i] = last
      last.pos = i
      this.update(last)
    }
  }

  /** Restores heap order after `node`'s key changed in either direction. */
  update(node: N): void {
    this.up(node.pos)
    this.down(node.pos)
  }

  private up(i: number): void {
    const items = this.items
    const node = items[i] as N
    while (i > 0) {
      const parent = (i - 1) >> 1
      const p = items[parent] as N
      if (!this.less(node, p)) break
      items[i] = p
      p.pos = i
      i = parent
    }
    items[i] = node
    node.pos = i
  }

  private down(i: number): void {
    const items = this.items
    const n = items.length
    const node = items[i] as N
    for (;;) {
      const l = 2 * i + 1
      if (l >= n) break
      const r = l + 1
      let c = l
      if (r < n && this.less(items[r] as N, items[l] as N)) c = r
      const child = items[c] as N
      if (!this.less(child, node)) break
      items[i] = child
      child.pos = i
      i = c
    }
    items[i] = node
    node.pos = i
  }
}
