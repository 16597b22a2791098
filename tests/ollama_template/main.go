// Renders an Ollama Modelfile TEMPLATE with Go's text/template, the engine Ollama itself uses.
//
// Input (stdin, JSON): {"template": "...", "messages": [{"role", "content", "thinking"}], "think": true|false|null}.
// The template sees the variables Ollama passes for a chat request: .System (the system messages
// joined by blank lines, as Ollama's collate does), .Messages, .IsThinkSet and .Think.
// Output (stdout): the rendered prompt, byte for byte.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role     string `json:"role"`
	Content  string `json:"content"`
	Thinking string `json:"thinking"`
}

type request struct {
	Template string    `json:"template"`
	Messages []Message `json:"messages"`
	Think    *bool     `json:"think"`
}

type values struct {
	System     string
	Messages   []Message
	IsThinkSet bool
	Think      bool
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("ollama").Parse(req.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "template does not parse:", err)
		os.Exit(1)
	}
	var system []string
	for _, m := range req.Messages {
		if m.Role == "system" {
			system = append(system, m.Content)
		}
	}
	v := values{System: strings.Join(system, "\n\n"), Messages: req.Messages}
	if req.Think != nil {
		v.IsThinkSet, v.Think = true, *req.Think
	}
	if err := tmpl.Execute(os.Stdout, v); err != nil {
		fmt.Fprintln(os.Stderr, "template failed:", err)
		os.Exit(1)
	}
}
