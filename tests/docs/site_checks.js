// What tests/docs/test_site.py checks inside each page of the site (see its docstring):
// a function returning the problems found, each a short sentence.
() => {
  const problems = [];
  const content = document.querySelector('.md-content');
  const windowRight = document.documentElement.clientWidth;
  const say = (el) => `<${el.tagName.toLowerCase()}> "${el.textContent.trim().slice(0, 50)}"`;
  const scrollsSideways = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const clips = (el) => ['hidden', 'clip'].includes(getComputedStyle(el).overflowX);

  // Code, tables, diagrams: clipped by their own box, or sticking out of the page.
  for (const el of content.querySelectorAll('pre, code, table, div.mermaid')) {
    if (el.getBoundingClientRect().width === 0) continue;  // not shown (a closed tab)
    if (clips(el) && el.scrollWidth > el.clientWidth + 1) {
      problems.push(`${say(el)} is cut off: ${el.scrollWidth}px of content in ${el.clientWidth}px, no scrollbar`);
    }
    // Inner scrolling boxes may extend past the window inside an outer one that scrolls:
    // the outermost is what must fit.
    let box = el;
    for (let up = el; up && up !== content; up = up.parentElement) {
      if (scrollsSideways(up)) box = up;
    }
    const right = box.getBoundingClientRect().right;
    if (right > windowRight + 1) {
      problems.push(`${say(el)} sticks out of the page: ends at ${Math.round(right)}px of ${windowRight}px`);
    }
  }

  // Table cells: every word on one line.
  // A name: letters, digits, underscores and dots (SingletonPool, qdbpool.dsn, __init__.py).
  const word = /[\p{L}\p{N}_.]+/gu;
  for (const cell of content.querySelectorAll('td, th')) {
    if (cell.closest('.highlighttable')) continue;  // line numbers of a code block
    const texts = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = texts.nextNode(); node; node = texts.nextNode()) {
      for (const m of node.data.matchAll(word)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const boxes = [...range.getClientRects()].filter((r) => r.width > 0);
        if (boxes.length < 2) continue;
        const tops = boxes.map((r) => r.top);
        if (Math.max(...tops) - Math.min(...tops) > boxes[0].height / 2) {
          problems.push(`table cell breaks the word "${m[0]}" over ${boxes.length} lines`);
        }
      }
    }
  }

  // Diagrams: rendered, and their text inside them.
  for (const pre of content.querySelectorAll('pre.mermaid')) {
    problems.push(`a Mermaid diagram was not rendered: ${say(pre)}`);
  }
  for (const host of content.querySelectorAll('div.mermaid')) {
    const svg = host.shadowRoot && host.shadowRoot.querySelector('svg');
    if (!svg) { problems.push('a Mermaid diagram has no picture'); continue; }
    const frame = svg.getBoundingClientRect();
    for (const text of svg.querySelectorAll('text, foreignObject span')) {
      const r = text.getBoundingClientRect();
      if (r.width === 0 || !text.textContent.trim()) continue;
      if (r.left < frame.left - 2 || r.right > frame.right + 2) {
        problems.push(`diagram text "${text.textContent.trim().slice(0, 40)}" is cut off at the diagram's edge`);
      }
    }
  }
  return problems;
}
