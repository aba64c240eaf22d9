"""From the user's input to the scoring conversation, in the order a row travels:

readers.py hub.py      local files, datasets folders, presets, the hub -> one Arrow table
sources.py answers.py  the table -> questions, answers, data_source, the split
template.py            the scoring conversation: system prompt, few-shot, instruction
conversation.py        the conversation rendered and cut into token segments
"""
